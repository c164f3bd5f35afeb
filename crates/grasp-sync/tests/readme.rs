//! The README's embedding example is `examples/embed.rs`, which `cargo test` compiles:
//! this keeps the page from drifting away from code that builds.

#[test]
fn readme_shows_the_compiled_embedding_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("examples/embed.rs")).unwrap();
    let readme = std::fs::read_to_string(root.join("../../README.md")).unwrap();
    let code = &example[example
        .find("use std::sync::Arc;")
        .expect("example starts its code")..];
    assert!(
        readme.contains(code),
        "README.md's embedding snippet differs from crates/grasp-sync/examples/embed.rs: copy the example's code (from `use std::sync::Arc;`) into the README"
    );
}
