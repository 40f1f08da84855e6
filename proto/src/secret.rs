//! A wrapper for passwords, keys and tokens whose `Debug` never prints the value and whose memory is
//! overwritten with zeros when it is dropped.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

/// Holds a secret value; `Debug` and `Display` print `<secret>`, and dropping it zeroes the value (for a
/// `String`, its whole heap buffer). Copies made through [`Secret::expose`] are the caller's to wipe.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Access the secret value. Call sites that use this are the places to audit.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// The value, moved out (the wrapper left behind holds the type's default, which is zeroed on drop).
    pub fn into_inner(mut self) -> T
    where
        T: Default,
    {
        std::mem::take(&mut self.0)
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl<T: Zeroize> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl<T: Zeroize> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<'de, T: Zeroize + Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

impl<T: Zeroize + Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_value() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s:?}"), "<secret>");
        assert_eq!(format!("{s}"), "<secret>");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn drop_zeroes_the_value() {
        use std::cell::Cell;
        use std::rc::Rc;
        /// Records that it was wiped.
        struct Probe(Rc<Cell<bool>>);
        impl Zeroize for Probe {
            fn zeroize(&mut self) {
                self.0.set(true);
            }
        }
        let wiped = Rc::new(Cell::new(false));
        let s = Secret::new(Probe(wiped.clone()));
        assert!(!wiped.get());
        drop(s);
        assert!(wiped.get(), "dropping a secret zeroizes it");
        // A string's zeroize empties it (and zeroes its buffer); moving the value out leaves an empty one.
        let mut pw = String::from("hunter2");
        pw.zeroize();
        assert_eq!(pw, "");
        assert_eq!(Secret::new(String::from("pw")).into_inner(), "pw");
    }
}
