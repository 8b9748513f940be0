//! Command-line options of the examples: `--name value` pairs.

/// The `(flag, value)` pairs of `args`; `Err(help)` for `--help` or `-h`,
/// and a message (with `help`) for a flag without its value.
pub fn pairs<'a>(args: &'a [String], help: &str) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut pairs = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(help.to_string());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n\n{help}"))?;
        pairs.push((flag.as_str(), value.as_str()));
    }
    Ok(pairs)
}
