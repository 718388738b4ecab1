//! The command lines the README shows, so that each binary's tests can check that its parser
//! takes them (`trainer/src/main.rs`, `exporter/src/main.rs` and
//! `edge-runtime/src/bin/edge/main.rs` include this file with `#[path]`: the binaries' argument
//! types are private to them).

/// One command line of the README that runs a given binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The line as written (continuations joined), for messages.
    pub line: String,
    /// The binary's arguments (after `cargo run ... --`, or after the binary's name).
    pub args: Vec<String>,
    /// Cargo features the `cargo run` asks for.
    pub features: Vec<String>,
}

/// Every command in the shell blocks (```` ```sh ````) of `readme` that runs `bin` of cargo
/// package `package`: `cargo run ... -p package [--bin bin] ... -- ARGS`, or `bin ARGS` at the
/// start of a command or after a pipe. Continuation lines are joined; comments, the other sides
/// of pipes and redirections (`> file`) are dropped. Arguments are split at whitespace (the
/// README quotes none).
pub fn commands(readme: &str, package: &str, bin: &str) -> Vec<Command> {
    let mut found = Vec::new();
    let (mut in_shell, mut pending) = (false, String::new());
    for line in readme.lines() {
        if line.starts_with("```") {
            in_shell = line.trim() == "```sh";
            pending.clear();
            continue;
        }
        if !in_shell {
            continue;
        }
        let code = match line.find('#') {
            Some(at) if at == 0 || line[..at].ends_with(char::is_whitespace) => &line[..at],
            _ => line,
        };
        pending.push_str(code.trim_end().trim_end_matches('\\'));
        pending.push(' ');
        if code.trim_end().ends_with('\\') {
            continue;
        }
        let joined = std::mem::take(&mut pending);
        for part in joined.split(['|', ';']).flat_map(|p| p.split("&&")) {
            if let Some(command) = parse(part, package, bin) {
                found.push(command);
            }
        }
    }
    found
}

/// Panics unless `parse` accepts every README command of `bin` (package `package`) that needs no
/// feature outside `enabled`, and there are at least `at_least` of them (a README reworded so
/// that none is found must not pass silently). `parse` gets the arguments after the program
/// name.
pub fn assert_all_parse<E: std::fmt::Display>(
    (package, bin): (&str, &str),
    at_least: usize,
    enabled: &[&str],
    parse: impl Fn(&[&str]) -> Result<(), E>,
) {
    let readme = include_str!("../../README.md");
    let found = commands(readme, package, bin);
    assert!(
        found.len() >= at_least,
        "README: {} commands of {bin} found, expected at least {at_least}",
        found.len()
    );
    for command in found {
        if command
            .features
            .iter()
            .any(|f| !enabled.contains(&f.as_str()))
        {
            continue;
        }
        let args: Vec<&str> = command.args.iter().map(String::as_str).collect();
        if let Err(e) = parse(&args) {
            panic!("README: `{}` does not parse: {e}", command.line);
        }
    }
}

/// `readme_commands_parse!(Cli, "package", "bin", at_least, ["feature", ...])`: a test module
/// in a binary that checks, with [`assert_all_parse`], that `Cli` (its clap parser) takes every
/// README command of `bin`; the features listed are those the binary has, each counted as
/// enabled when this build has it.
#[allow(unused_macros)]
macro_rules! readme_commands_parse {
    ($cli:ty, $package:literal, $bin:literal, $at_least:literal, [$($feature:literal),*]) => {
        mod readme_commands {
            #[test]
            fn the_readmes_commands_parse() {
                use clap::Parser;
                let built: &[Option<&str>] = &[$(cfg!(feature = $feature).then_some($feature)),*];
                let enabled: Vec<&str> = built.iter().flatten().copied().collect();
                super::readme::assert_all_parse(($package, $bin), $at_least, &enabled, |args| {
                    <$cli>::try_parse_from(std::iter::once($bin).chain(args.iter().copied()))
                        .map(drop)
                });
            }
        }
    };
}

fn parse(part: &str, package: &str, bin: &str) -> Option<Command> {
    let mut words: Vec<&str> = Vec::new();
    let mut tokens = part.split_whitespace();
    while let Some(word) = tokens.next() {
        if matches!(word, ">" | "<" | "2>" | ">>") {
            tokens.next();
        } else if !(word.starts_with('>') || word.starts_with("2>")) {
            words.push(word);
        }
    }
    let line = words.join(" ");
    let (args, features) = match words.as_slice() {
        ["cargo", "run", rest @ ..] => {
            let split = rest.iter().position(|&w| w == "--")?;
            let (cargo, args) = (&rest[..split], &rest[split + 1..]);
            let value = |flag: &str| {
                cargo
                    .windows(2)
                    .find(|pair| pair[0] == flag)
                    .map(|pair| pair[1])
            };
            if value("-p") != Some(package) || value("--bin").is_some_and(|b| b != bin) {
                return None;
            }
            let features = value("--features")
                .map(|list| list.split(',').map(String::from).collect())
                .unwrap_or_default();
            (args, features)
        }
        [first, args @ ..] if *first == bin => (args, Vec::new()),
        _ => return None,
    };
    Some(Command {
        line,
        args: args.iter().map(|&w| w.to_string()).collect(),
        features,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_commands_of_one_binary_in_shell_blocks_only() {
        let readme = "text edge generate --no\n```sh\n# edge comment\n\
            cargo run --release -p edge-runtime --features ort --bin edge -- bench \\\n    \
            --model m.onnx   # note\n\
            cat in | edge denoise --size 8x8 > out.y8\n\
            cargo run -p trainer -- train fc-vae\n\
            cd fw && edge --help\n```\n```text\nedge x\n```\n";
        let found = commands(readme, "edge-runtime", "edge");
        let args: Vec<_> = found.iter().map(|c| c.args.join(" ")).collect();
        assert_eq!(
            args,
            ["bench --model m.onnx", "denoise --size 8x8", "--help"]
        );
        assert_eq!(found[0].features, ["ort"]);
        assert!(found[1].features.is_empty());
        let trainer = commands(readme, "trainer", "trainer");
        assert_eq!(trainer.len(), 1);
        assert_eq!(trainer[0].args, ["train", "fc-vae"]);
    }
}
