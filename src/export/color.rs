//! Colour encodings shared by the writers and the readers.
//!
//! The texture decoder's base colour is in the same encoding as the textures it was trained on,
//! i.e. sRGB-encoded display values (upstream bakes it, ×255, into a PNG that glTF reads as
//! sRGB). PLY vertex colours are conventionally such 8-bit display values; glTF `COLOR_0` is
//! linear. Every writer first quantises the base colour to 8-bit sRGB, so the PLY and the GLB
//! carry the same colour, only encoded differently.

/// The 8-bit quantisation every writer and the texture baker share (defined beside the baker,
/// which sits below `export` in the module layering).
pub use crate::mesh::bake::unit_to_u8;

/// The sRGB transfer function inverted (IEC 61966-2-1), on values in [0, 1].
#[inline]
pub fn srgb_to_linear(c: f64) -> f64 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_and_transfer_function() {
        assert_eq!(unit_to_u8(-0.2), 0);
        assert_eq!(unit_to_u8(1.3), 255);
        assert_eq!(unit_to_u8(0.5), 128);
        assert_eq!(unit_to_u8(f32::NAN), 0);
        assert_eq!(srgb_to_linear(0.0), 0.0);
        assert!((srgb_to_linear(1.0) - 1.0).abs() < 1e-12);
        // Mid-grey 188/255 in sRGB is about 0.5 linear.
        assert!((srgb_to_linear(188.0 / 255.0) - 0.5029).abs() < 1e-3);
    }
}
