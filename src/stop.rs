//! Stop strings over streamed text: text is released as soon as it cannot
//! be the start of a stop string, and generation ends at the first match
//! (the stop string itself is not emitted), as llama.cpp and OpenAI do.

/// Feeds text pieces, returns what is safe to show.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// The outcome of one [`StopMatcher::push`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopOutput {
    /// Text to emit now.
    pub text: String,
    /// A stop string matched: emit `text`, then stop.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: impl IntoIterator<Item = impl Into<String>>) -> StopMatcher {
        let stops = stops
            .into_iter()
            .map(Into::into)
            .filter(|s: &String| !s.is_empty())
            .collect();
        StopMatcher {
            stops,
            held: String::new(),
        }
    }

    pub fn push(&mut self, piece: &str) -> StopOutput {
        self.held.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let text = self.held[..at].to_string();
            self.held.clear();
            return StopOutput {
                text,
                stopped: true,
            };
        }
        // Hold back the longest tail that could still grow into a stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopOutput {
            text,
            stopped: false,
        }
    }

    /// Whatever is held back, at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_matches_and_stops_on_full_ones() {
        let mut m = StopMatcher::new(["</s>", "\n\nUser:"]);
        assert_eq!(
            m.push("Hello <"),
            StopOutput {
                text: "Hello ".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.push("/"),
            StopOutput {
                text: "".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.push("x"),
            StopOutput {
                text: "</x".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.push(" ok\n\nUs"),
            StopOutput {
                text: " ok".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.push("er: hi"),
            StopOutput {
                text: "".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn flush_releases_the_tail_and_multibyte_is_safe() {
        let mut m = StopMatcher::new(["ééé"]);
        assert_eq!(m.push("aé").text, "a");
        assert_eq!(m.flush(), "é");
        let mut none = StopMatcher::new(Vec::<String>::new());
        assert_eq!(none.push("abc").text, "abc");
    }
}
