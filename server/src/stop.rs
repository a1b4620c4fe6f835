//! Stop strings on streamed text: text goes out as soon as it can no longer be the start of a
//! stop string, and generation ends at the first stop string, which is never sent.

/// Holds back the tail of the generated text that could still grow into a stop string.
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What one piece of generated text produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Matched {
    /// Text safe to send now.
    pub text: String,
    /// A stop string was found: `text` ends where it began; generation should end.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// Adds `piece` of generated text.
    pub fn push(&mut self, piece: &str) -> Matched {
        self.held.push_str(piece);
        let first_stop = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first_stop {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Matched { text, stopped: true };
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).rev().filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        Matched { text, stopped: false }
    }

    /// The text still held back, at the end of generation (it did not become a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut sent = Vec::new();
        for p in pieces {
            let r = m.push(p);
            sent.push(r.text);
            if r.stopped {
                return (sent, true, String::new());
            }
        }
        let rest = m.finish();
        (sent, false, rest)
    }

    #[test]
    fn text_without_stops_passes_straight_through() {
        assert_eq!(
            run(&[], &["Hello", ", world"]),
            (vec!["Hello".into(), ", world".into()], false, "".into())
        );
    }

    #[test]
    fn a_stop_split_across_pieces_is_cut_and_never_sent() {
        let (sent, stopped, _) = run(&["\n\nUser:"], &["The end.", "\n", "\nUs", "er: more"]);
        assert!(stopped);
        assert_eq!(sent.concat(), "The end.");
        // The newline was held back until it could no longer start the stop string.
        assert_eq!(sent, ["The end.", "", "", ""]);
    }

    #[test]
    fn a_false_start_is_released_when_it_diverges() {
        let (sent, stopped, rest) = run(&["STOP"], &["ab ST", "OR", "E"]);
        assert!(!stopped);
        assert_eq!(sent, ["ab ", "STOR", "E"]);
        assert_eq!(rest, "");
        // Held text that never completes a stop comes out at the end.
        let (sent, stopped, rest) = run(&["STOP"], &["go ST"]);
        assert_eq!((sent.concat(), stopped, rest.as_str()), ("go ".into(), false, "ST"));
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_multibyte_prefixes_are_safe() {
        let (sent, stopped, _) = run(&["cat", "é!"], &["the é! and the cat"]);
        assert!(stopped);
        assert_eq!(sent.concat(), "the ");
        let (sent, stopped, rest) = run(&["éa"], &["xé", "b"]);
        assert_eq!((sent.concat(), stopped, rest.as_str()), ("xéb".into(), false, ""));
    }
}
