//! The reference forward against transformers' own numbers (tests/fixtures/*/golden, made by
//! scripts/make_fixtures.py): strict at module level, bounded per layer (teacher forced) and end
//! to end, greedy decoding through the KV cache, and a proof that the end-to-end check can fail.

use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use tern_converters::model::Projection;
use tern_formats::safetensors_file::SafetensorsFile;
use tern_runtime::parity::{Thresholds, compare_logits, rel_l2};
use tern_runtime::reference::{Arithmetic, KvCache, Reference, no_tap};

/// 2B-4T-like forms, then the 1bitLLM (fp16 masters) and Llama-1.58 (packed, divide) families.
const FORMS: [&str; 7] =
    ["tiny/bf16", "tiny/packed", "odd/bf16", "odd/packed", "wide/packed", "onebit/fp16", "llama158/packed"];

fn fixture(form: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(form)
}

struct Golden {
    file: SafetensorsFile,
    json: serde_json::Value,
}

impl Golden {
    fn open(dir: &Path) -> Golden {
        let file = SafetensorsFile::open(dir.join("golden/golden.safetensors")).unwrap();
        let json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("golden/golden.json")).unwrap()).unwrap();
        Golden { file, json }
    }

    fn tensor(&self, name: &str) -> Tensor {
        let t = self.file.get(name).unwrap_or_else(|| panic!("golden {name} missing"));
        Tensor::from_vec(self.file.to_f32(t).unwrap(), t.shape.clone(), &Device::Cpu).unwrap()
    }

    fn prompts(&self) -> Vec<Vec<u32>> {
        self.json["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
            .collect()
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    rel_l2(&values(a), &values(b))
}

/// Feeding transformers' recorded input of every module reproduces its recorded output, in both
/// arithmetics (transformers' float order, and the exact-integer form verify uses).
#[test]
fn every_module_matches_transformers_strictly() {
    let mut worst = 0f64;
    for (form, arithmetic) in
        FORMS.iter().flat_map(|f| [(*f, Arithmetic::Transformers), (*f, Arithmetic::Exact)])
    {
        let dir = fixture(form);
        let model = Reference::load_with(&dir, arithmetic).unwrap();
        let g = Golden::open(&dir);
        let mut checked = 0;
        for t in g.file.tensors() {
            let Some(path) = t.name.strip_prefix("module.").and_then(|n| n.strip_suffix(".in")) else {
                continue;
            };
            let input = g.tensor(&t.name);
            let expected = g.tensor(&format!("module.{path}.out"));
            let got = if path == "model.norm" {
                model.final_norm.forward(&input).unwrap()
            } else {
                let rest = path.strip_prefix("model.layers.").unwrap();
                let (l, module) = rest.split_once('.').unwrap();
                let l: usize = l.parse().unwrap();
                let layer = &model.layers[l];
                let proj = |p| layer.projection(p).forward(&input).unwrap();
                match module {
                    "input_layernorm" => layer.input_norm.forward(&input).unwrap(),
                    "post_attention_layernorm" => layer.post_norm.forward(&input).unwrap(),
                    "self_attn.attn_sub_norm" => {
                        layer.attn_sub_norm.as_ref().unwrap().forward(&input).unwrap()
                    }
                    "mlp.ffn_sub_norm" => layer.ffn_sub_norm.as_ref().unwrap().forward(&input).unwrap(),
                    // The block as a whole holds an int8 quantisation (o_proj's input), where a
                    // rounding flip is legitimate; its pieces are each checked strictly instead,
                    // here the attention core: transformers' q/k/v in, its context out.
                    "self_attn" => {
                        let q = g.tensor(&format!("module.model.layers.{l}.self_attn.q_proj.out"));
                        let k = g.tensor(&format!("module.model.layers.{l}.self_attn.k_proj.out"));
                        let v = g.tensor(&format!("module.model.layers.{l}.self_attn.v_proj.out"));
                        let context = model.attention_core(l, q, k, v, &mut KvCache::default()).unwrap();
                        // The context: the sub-norm's input, or o_proj's when there is none.
                        let sub = format!("module.model.layers.{l}.self_attn.attn_sub_norm.in");
                        let expected = match g.file.get(&sub) {
                            Some(_) => g.tensor(&sub),
                            None => g.tensor(&format!("module.model.layers.{l}.self_attn.o_proj.in")),
                        };
                        let r = rel(&context, &expected);
                        assert!(r <= 1e-5, "{form} {arithmetic:?}: layer {l} attention core rel-L2 {r:.3e}");
                        worst = worst.max(r);
                        checked += 1;
                        continue;
                    }
                    "self_attn.q_proj" => proj(Projection::Q),
                    "self_attn.k_proj" => proj(Projection::K),
                    "self_attn.v_proj" => proj(Projection::V),
                    "self_attn.o_proj" => proj(Projection::O),
                    "mlp.gate_proj" => proj(Projection::Gate),
                    "mlp.up_proj" => proj(Projection::Up),
                    "mlp.down_proj" => proj(Projection::Down),
                    other => panic!("golden module {other} not covered"),
                }
            };
            let r = rel(&got, &expected);
            assert!(r <= 1e-5, "{form} {arithmetic:?}: {path} rel-L2 {r:.3e}");
            worst = worst.max(r);
            checked += 1;
        }
        // Per layer 7 projections, 2 norms, the sub-norms the family has, the attention core;
        // plus the final norm.
        let sub_norms = model.layers[0].attn_sub_norm.is_some() as usize
            + model.layers[0].ffn_sub_norm.is_some() as usize;
        assert_eq!(checked, (10 + sub_norms) * model.spec.layers + 1, "{form}");
    }
    println!("modules: worst rel-L2 {worst:.2e}");
}

/// Layer l fed transformers' residual[l] gives residual[l+1]: within 1e-4 for most layers; int8
/// rounding-tie flips may push a few higher, never past 5e-3 (docs/reference.md).
#[test]
fn every_layer_matches_transformers_when_teacher_forced() {
    let (mut tight, mut total, mut worst) = (0, 0, 0f64);
    for form in FORMS {
        let dir = fixture(form);
        let model = Reference::load(&dir).unwrap();
        let g = Golden::open(&dir);
        for p in 0..g.prompts().len() {
            for l in 0..model.spec.layers {
                let x = g.tensor(&format!("residual.{p}.{l}"));
                let expected = g.tensor(&format!("residual.{p}.{}", l + 1));
                let got = model.layer(l, &x, &mut KvCache::default(), &mut no_tap()).unwrap();
                let r = rel(&got, &expected);
                assert!(r <= 5e-3, "{form} prompt {p} layer {l}: rel-L2 {r:.3e}");
                tight += (r <= 1e-4) as usize;
                total += 1;
                worst = worst.max(r);
            }
        }
    }
    println!("teacher-forced layers within 1e-4: {tight}/{total}, worst {worst:.3e}");
    assert!(tight * 10 >= total * 8, "only {tight}/{total} layers within 1e-4");
}

/// The end-to-end comparison of a model's logits with transformers' for every golden prompt.
fn golden_reports(model: &Reference, g: &Golden) -> Vec<tern_runtime::parity::LogitsReport> {
    g.prompts()
        .iter()
        .enumerate()
        .map(|(p, tokens)| {
            let expected = values(&g.tensor(&format!("logits.{p}")));
            let got = model.prompt_logits(tokens).unwrap();
            compare_logits(&got, &expected, model.spec.vocab, Thresholds::default().min_gap)
        })
        .collect()
}

/// End to end: logits of every prompt within the reference tolerances, for every fixture form.
#[test]
fn logits_match_transformers_end_to_end() {
    for form in FORMS {
        let dir = fixture(form);
        let model = Reference::load(&dir).unwrap();
        let g = Golden::open(&dir);
        let reports = golden_reports(&model, &g);
        for (p, r) in reports.iter().enumerate() {
            println!(
                "{form} prompt {p}: rel-L2 {:.2e}, max abs {:.2e}, top-1 {}/{}",
                r.rel_l2, r.max_abs, r.top1_agree, r.top1_considered
            );
        }
        assert_eq!(Thresholds::default().failure(&reports), None, "{form}");
    }
}

/// Logit deviations between two correct f32 implementations reach ~0.15 on these fixtures
/// (transformers' own KV-cache decode vs prefill, ../shared/docs/hf-checkpoints.md §4), so a greedy
/// step whose top-2 margin is below twice that may legitimately pick the runner-up.
const NEAR_TIE: f64 = 0.3;

/// Greedy decoding through the KV cache reproduces transformers' `generate` (KV-cache path):
/// teacher forced, every step with a clear margin picks transformers' token; free running, the
/// tokens are identical up to the first near-tie.
#[test]
fn greedy_decoding_with_kv_cache_matches_transformers() {
    let mut near_ties = 0;
    for form in FORMS {
        let dir = fixture(form);
        let model = Reference::load(&dir).unwrap();
        let g = Golden::open(&dir);
        let prompts = g.prompts();
        for run in g.json["greedy"].as_array().unwrap() {
            let p = run["prompt"].as_u64().unwrap() as usize;
            let expected: Vec<u32> =
                run["new_tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            let margins: Vec<f64> = run["nocache_top1_top2_margins"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_f64().unwrap())
                .collect();
            let mut cache = KvCache::default();
            let mut input = prompts[p].clone();
            for (step, (&want, &margin)) in expected.iter().zip(&margins).enumerate() {
                let logits = model.forward(&input, &mut cache, &mut no_tap()).unwrap();
                let last: Vec<f32> = logits.get(logits.dims()[0] - 1).unwrap().to_vec1().unwrap();
                let got = tern_runtime::parity::argmax(&last) as u32;
                if margin > NEAR_TIE {
                    assert_eq!(got, want, "{form} prompt {p} step {step} (margin {margin:.3})");
                } else {
                    near_ties += (got != want) as usize;
                }
                input = vec![want];
            }
            let free = model.greedy(&prompts[p], expected.len(), &[1, 2]).unwrap();
            let clear = margins.iter().position(|&m| m <= NEAR_TIE).unwrap_or(expected.len());
            assert_eq!(free[..clear], expected[..clear], "{form} prompt {p}: free-running greedy");
        }
    }
    println!("near-tie steps that picked the runner-up: {near_ties}");
}

/// Decoding one token at a time through the cache gives the prompt-at-once logits.
#[test]
fn kv_cache_decode_matches_prompt_at_once() {
    let dir = fixture("tiny/bf16");
    let model = Reference::load(&dir).unwrap();
    let tokens = &Golden::open(&dir).prompts()[1];
    let at_once = model.prompt_logits(tokens).unwrap();
    let mut cache = KvCache::default();
    let mut stepped = Vec::new();
    for &t in tokens {
        stepped.extend(values(&model.forward(&[t], &mut cache, &mut no_tap()).unwrap()));
    }
    assert_eq!(cache.len(), tokens.len());
    let r = compare_logits(&stepped, &at_once, model.spec.vocab, Thresholds::default().min_gap);
    assert!(r.rel_l2 <= 2e-2 && r.top1_agree == r.top1_considered, "{r:?}");
}

/// The end-to-end check is not vacuous: one weight_scale off by 1 % is rejected. (o_proj: the
/// scales of v, gate and up are invisible by construction — the sub-norms after them are
/// scale-invariant — see docs/reference.md.)
#[test]
fn end_to_end_check_rejects_a_one_percent_scale_error() {
    let tmp = std::env::temp_dir().join(format!("tern-perturb-{}", std::process::id()));
    let dir = tmp.join("packed");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("tiny/packed");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let st = SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
    let t = st.get("model.layers.0.self_attn.o_proj.weight_scale").unwrap().clone();
    let old = st.to_f32(&t).unwrap()[0];
    drop(st);
    let mut bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let new = half::bf16::from_f32(old * 1.01);
    assert!((new.to_f32() / old - 1.01).abs() < 0.004, "bf16 keeps a 1 % change");
    bytes[t.start..t.end].copy_from_slice(&new.to_le_bytes());
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();

    let model = Reference::load(&dir).unwrap();
    let g = Golden::open(&src);
    let reports = golden_reports(&model, &g);
    std::fs::remove_dir_all(&tmp).unwrap();
    let failure = Thresholds::default().failure(&reports);
    println!("perturbed: {failure:?}");
    assert!(failure.is_some(), "a 1 % scale error must fail the check: {reports:?}");
}
