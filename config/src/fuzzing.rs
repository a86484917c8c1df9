//! The entry point of the `config` fuzz target (`fuzz/`, libFuzzer) and of the test that
//! replays its corpus: the configuration loader on arbitrary text returns problems, never
//! panics, and every problem says what is wrong.

/// The configuration loader on `data` as text: it returns, and every problem has a message.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A base folder that does not exist: files named by the text are not found, not read.
    if let Err(crate::ConfigError::Invalid(problems)) =
        crate::parse_str(text, std::path::Path::new("/nonexistent-fuzz-base"))
    {
        assert!(!problems.is_empty());
        for problem in problems.iter() {
            assert!(!problem.message.is_empty(), "a problem says what is wrong");
        }
    }
}
