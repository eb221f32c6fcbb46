//! What the Bitcoin and Stacks node clients share over HTTP: a bounded body read and the text of
//! an error with its causes.

/// Why an answer's body was not read.
pub(crate) enum BodyError {
    /// Longer than the limit (by its Content-Length or as it arrived).
    TooLarge,
    /// The connection broke mid-answer: the error chain.
    Broken(String),
}

/// Reads a response body of at most `max` bytes, refusing a longer one before holding it.
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(BodyError::Broken(error_chain(&e))),
        }
    }
}

/// An error's text followed by each cause not already in it.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
