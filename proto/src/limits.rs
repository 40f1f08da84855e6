//! Caps on what a remote desktop server may make a session hold, shared by the VNC and RDP clients.

use std::fmt;
use std::str::FromStr;

/// The largest desktop (framebuffer) a server may impose: at most `width * height` pixels and no side
/// longer than the longer of the two, so the default 4096x2160 (a 4K monitor) also admits the same monitor
/// rotated (2160x4096) or any other shape of at most 8.8 megapixels (35 MiB of framebuffer). A server over
/// it ends its session with `target_error`; browsers asking for a larger desktop are clamped to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxDesktop {
    pub width: u16,
    pub height: u16,
}

impl MaxDesktop {
    /// 4K (DCI 4096x2160), one monitor.
    pub const DEFAULT: MaxDesktop = MaxDesktop {
        width: 4096,
        height: 2160,
    };
    /// Neither side of the configured limit may exceed this (16384² is 1 GiB of framebuffer).
    pub const MAX_SIDE: u16 = 16384;
    /// Nor be shorter than this.
    pub const MIN_SIDE: u16 = 16;

    /// The pixel budget.
    pub fn pixels(&self) -> u32 {
        u32::from(self.width) * u32::from(self.height)
    }

    /// The longest side allowed.
    pub fn long_side(&self) -> u16 {
        self.width.max(self.height)
    }

    /// Whether a `width` x `height` desktop fits (an empty one never does).
    pub fn allows(&self, width: u16, height: u16) -> bool {
        width > 0
            && height > 0
            && width.max(height) <= self.long_side()
            && u32::from(width) * u32::from(height) <= self.pixels()
    }

    /// The largest size within the limit with `width` and `height` as upper bounds (each side clamped to
    /// the long side, then the height reduced to fit the pixel budget).
    pub fn clamp(&self, width: u16, height: u16) -> (u16, u16) {
        let w = width.clamp(1, self.long_side());
        let h = height.clamp(1, self.long_side());
        let h = h.min((self.pixels() / u32::from(w)).min(u32::from(u16::MAX)) as u16);
        (w, h)
    }
}

impl Default for MaxDesktop {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for MaxDesktop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid desktop size {0:?} (expected WIDTHxHEIGHT, each side 16 to 16384)")]
pub struct MaxDesktopError(String);

impl FromStr for MaxDesktop {
    type Err = MaxDesktopError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MaxDesktopError(s.to_owned());
        let (w, h) = s.trim().split_once(['x', 'X', '×']).ok_or_else(err)?;
        let side = |v: &str| {
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|n| (Self::MIN_SIDE..=Self::MAX_SIDE).contains(n))
                .ok_or_else(err)
        };
        Ok(MaxDesktop {
            width: side(w)?,
            height: side(h)?,
        })
    }
}

/// From its `WIDTHxHEIGHT` text (configuration files).
impl<'de> serde::Deserialize<'de> for MaxDesktop {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Largest cursor (pointer image) side accepted from a VNC server; RDP's own limit is 384 (large pointers).
pub const MAX_CURSOR_SIDE: u16 = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_admits_4k_in_both_orientations_and_nothing_larger() {
        let m = MaxDesktop::default();
        assert!(m.allows(4096, 2160));
        assert!(m.allows(2160, 4096), "a rotated monitor");
        assert!(m.allows(3840, 2160));
        assert!(m.allows(1, 1));
        assert!(!m.allows(4097, 100), "longer than the long side");
        assert!(!m.allows(4096, 2161), "over the pixel budget");
        assert!(!m.allows(16384, 16384));
        assert!(!m.allows(0, 100));
        assert_eq!(m.clamp(5000, 3000), (4096, 2160));
        assert_eq!(m.clamp(1920, 1080), (1920, 1080));
        assert_eq!(m.clamp(2160, 65535), (2160, 4096));
        assert!(m.allows(m.clamp(3000, 3000).0, m.clamp(3000, 3000).1));
    }

    #[test]
    fn sizes_parse_from_width_x_height() {
        assert_eq!(
            "1920x1080".parse(),
            Ok(MaxDesktop {
                width: 1920,
                height: 1080
            })
        );
        assert_eq!(
            " 7680X4320 ".parse(),
            Ok(MaxDesktop {
                width: 7680,
                height: 4320
            })
        );
        assert_eq!(MaxDesktop::DEFAULT.to_string(), "4096x2160");
        let from_json: MaxDesktop = serde_json::from_str("\"2560x1440\"").unwrap();
        assert_eq!((from_json.width, from_json.height), (2560, 1440));
        assert!(serde_json::from_str::<MaxDesktop>("\"big\"").is_err());
        for bad in ["", "1920", "1920x", "x1080", "0x100", "20000x100", "axb", "8x8"] {
            assert!(bad.parse::<MaxDesktop>().is_err(), "{bad:?}");
        }
    }
}
