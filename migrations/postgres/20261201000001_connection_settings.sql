-- Protocol settings of a connection (RDP domain, security, size, colour depth, clipboard directions,
-- certificate policy, ask for credentials), as a JSON object; `{}` means all defaults.
ALTER TABLE connections ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
