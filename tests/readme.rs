//! The README's composed-stack example is `examples/composed.rs`, word for
//! word, and it runs.

#[allow(dead_code)]
#[path = "../examples/composed.rs"]
mod composed;

/// The lines between the `README: begin` and `README: end` markers of
/// the example, without their indentation.
fn example_region() -> Vec<String> {
    let source = include_str!("../examples/composed.rs");
    let begin = source.find("// README: begin").expect("a begin marker");
    let end = source.find("// README: end").expect("an end marker");
    let mut lines: Vec<String> = source[begin..end]
        .lines()
        .skip(1)
        .map(|line| {
            line.strip_prefix("    ")
                .unwrap_or(line)
                .trim_end()
                .to_string()
        })
        .collect();
    while lines.last().is_some_and(|line| line.is_empty()) {
        lines.pop();
    }
    lines
}

/// The README's code block that follows `<!-- composed -->`.
fn readme_block() -> Vec<String> {
    let readme = include_str!("../README.md");
    let marker = readme
        .find("<!-- composed -->")
        .expect("the README marks the composed example");
    let block = &readme[marker..];
    let start = block
        .find("```rust\n")
        .expect("a rust block after the marker")
        + "```rust\n".len();
    let length = block[start..].find("```").expect("the block ends");
    block[start..start + length]
        .lines()
        .map(|line| line.trim_end().to_string())
        .collect()
}

#[test]
fn the_readme_shows_the_composed_example_as_it_is_compiled() {
    let shown = readme_block();
    let compiled = example_region();
    // The README adds the imports above the code.
    let code: Vec<String> = shown
        .iter()
        .skip_while(|l| l.starts_with("use ") || l.is_empty())
        .cloned()
        .collect();
    assert_eq!(code, compiled, "README.md and examples/composed.rs differ");
    assert!(
        shown.len() <= 30,
        "the composed example is {} lines",
        shown.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_composed_example_runs() {
    let dir = tempfile::tempdir().unwrap();
    let published = composed::compose(dir.path()).await.unwrap();
    assert_eq!(published, 1, "the write became one change event");
}
