//! The README's Rust examples are the ones `engine/src/readme.rs` compiles as doctests, line for
//! line (the doctests' hidden `# ` lines are scaffolding the README leaves out). The "With
//! tokio" example is checked against `volley::tokio`'s doctest in `tests/tokio.rs`.

/// The lines of every ```rust / ```no_run block in `text`, in order, blank lines dropped.
fn blocks(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```rust").or_else(|| rest.find("```no_run")) {
        let body = &rest[start..];
        let body = &body[body.find('\n').expect("a fence line") + 1..];
        let end = body.find("```").expect("the block ends");
        out.push(
            body[..end]
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
        );
        rest = &body[end + 3..];
    }
    out
}

#[test]
fn readme_examples_are_the_compiled_ones() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let module =
        std::fs::read_to_string(format!("{root}/engine/src/readme.rs")).expect("readme.rs");
    let doc: String = module
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let compiled: Vec<Vec<String>> = blocks(&doc)
        .into_iter()
        .map(|b| {
            b.into_iter()
                .filter(|l| !l.starts_with("# ") && l != "#")
                .collect()
        })
        .collect();
    let shown = blocks(&readme);
    // Every README example but the last ("With tokio", checked in tests/tokio.rs).
    assert_eq!(
        shown.len(),
        compiled.len() + 1,
        "a README rust block without its doctest (add it to engine/src/readme.rs)"
    );
    for (i, (s, c)) in shown.iter().zip(&compiled).enumerate() {
        assert_eq!(s, c, "README rust block {i} drifted from its doctest");
    }
}
