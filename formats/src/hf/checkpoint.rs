//! A Hugging Face checkpoint folder: `config.json` plus `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Every shard is memory-mapped; tensors are handed out one at a
//! time as views, so even a 3.8 GB checkpoint never sits in RAM.

use super::config::HfConfig;
use crate::error::{FormatError, Result};
use crate::safetensors_file::{SafetensorsFile, StTensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct HfCheckpoint {
    pub dir: PathBuf,
    pub config: HfConfig,
    pub shards: Vec<SafetensorsFile>,
    /// name → (shard, index in that shard's tensor list)
    index: HashMap<String, (usize, usize)>,
    /// All tensor names, shard by shard in file order.
    names: Vec<String>,
}

/// A tensor and the file it lives in.
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    pub file: &'a SafetensorsFile,
    pub info: &'a StTensor,
}

impl<'a> TensorRef<'a> {
    pub fn data(&self) -> &'a [u8] {
        self.file.data(self.info)
    }

    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.file.to_f32(self.info)
    }

    /// See [`SafetensorsFile::to_f32_into`].
    pub fn to_f32_into(&self, values: &mut Vec<f32>) -> Result<()> {
        self.file.to_f32_into(self.info, values)
    }

    /// See [`SafetensorsFile::range_to_f32`].
    pub fn range_to_f32(&self, range: std::ops::Range<usize>) -> Result<Vec<f32>> {
        self.file.range_to_f32(self.info, range)
    }

    /// See [`SafetensorsFile::for_each_f32_chunk`].
    pub fn for_each_f32_chunk(&self, chunk: usize, f: impl FnMut(&[f32]) -> Result<()>) -> Result<()> {
        self.file.for_each_f32_chunk(self.info, chunk, f)
    }

    /// See [`SafetensorsFile::release`].
    #[cfg(unix)]
    pub fn release(&self) {
        self.file.release(self.info)
    }

    pub fn path(&self) -> &'a Path {
        &self.file.path
    }

    pub fn error(&self, msg: impl Into<String>) -> FormatError {
        FormatError::tensor(&self.file.path, &self.info.name, msg)
    }
}

impl HfCheckpoint {
    pub fn open(dir: impl AsRef<Path>) -> Result<HfCheckpoint> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            let what = if dir.exists() { "is not a folder" } else { "does not exist" };
            return Err(FormatError::unsupported(
                &dir,
                format!("{what}: expected a Hugging Face checkpoint folder (config.json + *.safetensors)"),
            ));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(FormatError::unsupported(
                &dir,
                "no config.json: not a Hugging Face checkpoint folder",
            ));
        }
        let config = HfConfig::from_file(&config_path)?;

        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let (shard_paths, weight_map) = if index_path.is_file() {
            let (files, map) = read_index(&index_path)?;
            (files.into_iter().map(|f| dir.join(f)).collect::<Vec<_>>(), Some(map))
        } else if single.is_file() {
            (vec![single], None)
        } else {
            return Err(FormatError::unsupported(
                &dir,
                "no model.safetensors and no model.safetensors.index.json (PyTorch .bin checkpoints are not supported; re-save with safetensors)",
            ));
        };

        let mut shards = Vec::with_capacity(shard_paths.len());
        for p in &shard_paths {
            if !p.is_file() {
                return Err(FormatError::corrupt(
                    &index_path,
                    format!("lists shard {} which does not exist", p.display()),
                ));
            }
            shards.push(SafetensorsFile::open(p)?);
        }
        let mut index: HashMap<String, (usize, usize)> = HashMap::new();
        let mut names = Vec::new();
        for (s, shard) in shards.iter().enumerate() {
            for (i, t) in shard.tensors().iter().enumerate() {
                if let Some(&(other, _)) = index.get(&t.name) {
                    let other: &SafetensorsFile = &shards[other];
                    return Err(FormatError::tensor(
                        &shard.path,
                        &t.name,
                        format!("also present in {}", other.path.display()),
                    ));
                }
                index.insert(t.name.clone(), (s, i));
                names.push(t.name.clone());
            }
        }
        if let Some(map) = weight_map {
            for (name, file) in &map {
                let expected = dir.join(file);
                match index.get(name) {
                    Some(&(s, _)) if shards[s].path == expected => {}
                    Some(&(s, _)) => {
                        return Err(FormatError::corrupt(
                            &index_path,
                            format!("says '{name}' is in {file} but it is in {}", shards[s].path.display()),
                        ));
                    }
                    None => {
                        return Err(FormatError::corrupt(
                            &index_path,
                            format!("lists tensor '{name}' in {file}, which does not contain it"),
                        ));
                    }
                }
            }
        }
        Ok(HfCheckpoint { dir, config, shards, index, names })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        let &(s, i) = self.index.get(name)?;
        let file = &self.shards[s];
        Some(TensorRef { file, info: &file.tensors()[i] })
    }

    /// A tensor that must exist; the error says which folder lacks it.
    pub fn require(&self, name: &str) -> Result<TensorRef<'_>> {
        self.get(name).ok_or_else(|| FormatError::tensor(&self.dir, name, "missing from the checkpoint"))
    }

    /// Total bytes of tensor data over all shards.
    pub fn data_bytes(&self) -> u64 {
        self.shards.iter().flat_map(|s| s.tensors()).map(|t| (t.end - t.start) as u64).sum()
    }
}

/// Reads `model.safetensors.index.json`: the shard files (sorted, unique) and the weight map.
/// Shard file names (sorted, unique) and the (tensor, file) pairs of the weight map.
type ShardIndex = (Vec<String>, Vec<(String, String)>);

fn read_index(path: &Path) -> Result<ShardIndex> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    let root: Value = serde_json::from_str(&text)
        .map_err(|e| FormatError::corrupt(path, format!("not valid JSON: {e}")))?;
    let Some(map) = root.get("weight_map").and_then(Value::as_object) else {
        return Err(FormatError::corrupt(path, "has no 'weight_map' object"));
    };
    let mut pairs = Vec::with_capacity(map.len());
    for (name, file) in map {
        let Some(file) = file.as_str() else {
            return Err(FormatError::corrupt(path, format!("weight_map entry '{name}' is not a file name")));
        };
        // A shard name is a plain file name in the same folder, never a path out of it.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(FormatError::corrupt(
                path,
                format!("weight_map entry '{name}' points outside the folder: {file}"),
            ));
        }
        pairs.push((name.clone(), file.to_string()));
    }
    let mut files: Vec<String> = pairs.iter().map(|(_, f)| f.clone()).collect();
    files.sort();
    files.dedup();
    Ok((files, pairs))
}
