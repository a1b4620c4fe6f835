//! Token generation on a session: feed the prompt, then sample one token at a time until the
//! limit or a stop id, timing prompt processing and generation separately.

use crate::Result;
use crate::model::{Session, Want};
use crate::sampler::Sampler;
use std::time::Instant;

#[derive(Debug, Clone, Copy, Default)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub generated: usize,
    pub gen_secs: f64,
    /// Whether generation ended on a stop id (rather than the limit).
    pub stopped: bool,
}

impl GenStats {
    pub fn prompt_rate(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_secs.max(1e-9)
    }

    pub fn gen_rate(&self) -> f64 {
        self.generated as f64 / self.gen_secs.max(1e-9)
    }
}

/// Feeds `prompt` (appended to whatever the session holds) and generates up to `max_new`
/// tokens, calling `on_token` for each (including a final stop id). `history` collects every
/// token for the repetition penalty.
pub fn generate(
    session: &mut Session,
    sampler: &mut Sampler,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    history: &mut Vec<u32>,
    on_token: &mut dyn FnMut(u32),
) -> Result<GenStats> {
    let mut stats = GenStats { prompt_tokens: prompt.len(), ..GenStats::default() };
    let t0 = Instant::now();
    let mut logits = session.forward(prompt, Want::Last, None)?;
    stats.prompt_secs = t0.elapsed().as_secs_f64();
    history.extend_from_slice(prompt);
    let t1 = Instant::now();
    for i in 0..max_new {
        let next = sampler.sample(&logits, history);
        history.push(next);
        stats.generated += 1;
        on_token(next);
        if stop.contains(&next) {
            stats.stopped = true;
            break;
        }
        if i + 1 < max_new {
            if session.position() >= session.context() {
                break;
            }
            logits = session.forward(&[next], Want::Last, None)?;
        }
    }
    stats.gen_secs = t1.elapsed().as_secs_f64();
    Ok(stats)
}
