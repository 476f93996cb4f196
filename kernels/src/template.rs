//! Filling WGSL templates: kernels keep their source in `kernels/wgsl/` with
//! `{{NAME}}` holes (tile sizes, element types, loader functions) that the
//! op's Rust module fills for the variant it picked. The filled source is what
//! the engine compiles and what `tests/wgsl_valid.rs` validates.

/// Replaces every `{{NAME}}` in `template` by its value.
///
/// A hole left unfilled is a bug in the calling module, not an input error:
/// the naga validation test catches it (`{{` does not parse as WGSL).
pub(crate) fn fill(template: &str, holes: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in holes {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    out
}

/// `log2(n)` for a power of two: kernels shift instead of dividing, because
/// naga wraps integer `/` and `%` in checked helper functions.
pub(crate) fn log2(n: u32) -> u32 {
    debug_assert!(n.is_power_of_two(), "{n} is not a power of two");
    n.trailing_zeros()
}

/// A WGSL `u32` literal.
pub(crate) fn u(n: u32) -> String {
    format!("{n}u")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_hole() {
        let s = fill(
            "const A = {{A}}; const B = {{B}}{{A}};",
            &[("A", u(3)), ("B", "x".into())],
        );
        assert_eq!(s, "const A = 3u; const B = x3u;");
    }
}
