//! The user PIN, kept out of logs and wiped from memory on drop.

use std::fmt;

use cryptoki::types::AuthPin;
use zeroize::Zeroize;

/// User PIN of the token.
///
/// `Debug` prints `Pin(***)` and there is no `Display`, so the PIN cannot reach a log
/// or an error message by formatting. The buffer is zeroised on drop.
pub struct Pin(AuthPin);

impl Pin {
    /// Takes the PIN and wipes the caller's `String` buffer after copying it.
    pub fn new(mut pin: String) -> Pin {
        // Copying from &str allocates exactly the PIN's length, so the conversion to a
        // boxed str inside `AuthPin` does not reallocate and leave an unwiped copy.
        let secret = AuthPin::from(pin.as_str());
        pin.zeroize();
        Pin(secret)
    }

    pub(super) fn secret(&self) -> &AuthPin {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_debug_hides_value() {
        let pin = Pin::new("123456".to_string());
        assert_eq!(format!("{pin:?}"), "Pin(***)");
    }
}
