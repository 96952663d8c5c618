//! Tree-ensemble importers: XGBoost's JSON model and ONNX-ML
//! TreeEnsembleClassifier / TreeEnsembleRegressor, into the `trees` engine's
//! IR (`forest::IrNode`), then laid out for speed (`forest::layout`).
//!
//! tract is not used for trees: its TreeEnsembleClassifier is 100–250× slower
//! than onnxruntime and mislabels binary exports (FIELD-NOTES).
//!
//! (Over 600 lines: three importers — XGBoost JSON/UBJ, LightGBM text, ONNX-ML
//! v1 and v5 — and the node-by-node reference evaluator they are verified
//! against, which must read the same IR; the layout is in `forest.rs`.)

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use neoc_runtime::engine::trees::{self, Forest, PostTransform, Task};

use crate::forest::{self, IrNode};
use serde_json::Value;
use tract_onnx::pb;

/// A tree model ready to package, with its I/O names.
pub struct TreeModel {
    pub forest: Forest,
    /// Trees as imported (node ids as in the source), for the reference evaluation.
    pub ir: Vec<Vec<IrNode>>,
    pub input_name: String,
    pub output_names: Vec<String>,
}

// ------------------------------------------------------------------ XGBoost

fn num(v: &Value, what: &str) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64().with_context(|| format!("{what}: not a number")),
        Value::String(s) => {
            let s = s.trim().trim_start_matches('[').trim_end_matches(']');
            let first = s.split(',').next().unwrap_or("").trim();
            first.parse::<f64>().with_context(|| format!("{what}: `{s}` is not a number"))
        }
        _ => bail!("{what}: expected a number, found {v}"),
    }
}

fn num_list(v: &Value, what: &str) -> Result<Vec<f64>> {
    match v {
        Value::String(s) if s.trim().starts_with('[') => s
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|x| x.trim().parse::<f64>().with_context(|| format!("{what}: `{x}` is not a number")))
            .collect(),
        other => Ok(vec![num(other, what)?]),
    }
}

fn array<'a>(v: &'a Value, key: &str, tree: usize) -> Result<&'a Vec<Value>> {
    v.get(key).and_then(|x| x.as_array()).with_context(|| format!("tree {tree}: `{key}` is missing or not an array"))
}

/// The most input features a tree model may declare: its rows are a flat
/// f32 array, and a width beyond is a corrupt or hostile file.
pub const MAX_FEATURES: usize = 1 << 24;
/// The most classes: the labels are listed in the bundle.
pub const MAX_CLASSES: usize = 1 << 16;

/// Parses XGBoost's JSON model format (`Booster.save_model("*.json")`), or
/// its binary twin UBJSON (`*.ubj`, XGBoost's default since 2.1). Errors
/// do not name the file: the caller does.
pub fn xgboost_json(path: &Path) -> Result<TreeModel> {
    let bytes = std::fs::read(path).context("reading the model")?;
    xgboost_bytes(&bytes)
}

/// [`xgboost_json`] on the file's bytes.
pub fn xgboost_bytes(bytes: &[u8]) -> Result<TreeModel> {
    let doc: Value =
        if bytes.first() == Some(&b'{') && bytes.get(1).is_some_and(|b| !b.is_ascii_whitespace() && *b != b'"') {
            ubjson(bytes).map_err(|e| anyhow::anyhow!("not a valid XGBoost UBJSON model ({e})"))?
        } else {
            serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("not a valid XGBoost JSON model ({e})"))?
        };
    let learner = doc.get("learner").context("XGBoost model has no `learner` (is this an XGBoost JSON model?)")?;
    let params = learner.get("learner_model_param").context("XGBoost model has no `learner_model_param`")?;
    let num_feature = num(params.get("num_feature").context("missing num_feature")?, "num_feature")?;
    if !(num_feature >= 1.0 && num_feature <= MAX_FEATURES as f64) {
        bail!("num_feature {num_feature} is out of range (1 to {MAX_FEATURES})");
    }
    let num_feature = num_feature as usize;
    let num_class = params.get("num_class").map(|v| num(v, "num_class")).transpose()?.unwrap_or(0.0);
    if !(0.0..=MAX_CLASSES as f64).contains(&num_class) {
        bail!("num_class {num_class} is out of range (0 to {MAX_CLASSES})");
    }
    let num_class = num_class as usize;
    if params.get("num_target").map(|v| num(v, "num_target")).transpose()?.unwrap_or(1.0) as usize != 1 {
        bail!("multi-target XGBoost models are not supported yet");
    }
    let base_scores = num_list(params.get("base_score").context("missing base_score")?, "base_score")?;
    let objective = learner
        .get("objective")
        .and_then(|o| o.get("name"))
        .and_then(|n| n.as_str())
        .context("XGBoost model has no objective name")?
        .to_string();
    let booster = learner.get("gradient_booster").context("XGBoost model has no gradient_booster")?;
    let booster_name = booster.get("name").and_then(|n| n.as_str()).unwrap_or("");
    if booster_name != "gbtree" {
        bail!("XGBoost booster `{booster_name}` is not supported (only gbtree)");
    }
    let model = booster.get("model").context("gbtree has no model")?;
    let tree_docs = model.get("trees").and_then(|t| t.as_array()).context("gbtree model has no trees")?;
    let tree_info: Vec<usize> = model
        .get("tree_info")
        .and_then(|t| t.as_array())
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(u64::MAX) as usize).collect())
        .unwrap_or_else(|| vec![0; tree_docs.len()]);
    if tree_info.len() != tree_docs.len() {
        bail!("tree_info lists {} trees, the model has {}", tree_info.len(), tree_docs.len());
    }
    let groups = num_class.max(1);
    let (post, task, margin_of): (PostTransform, Task, fn(f32) -> f32) = match objective.as_str() {
        "binary:logistic" => (PostTransform::BinarySigmoid, Task::Classifier { labels: vec![0, 1] }, logit),
        "reg:logistic" => (PostTransform::Sigmoid, Task::Regressor, logit),
        "multi:softprob" | "multi:softmax" => {
            if num_class < 2 {
                bail!("objective {objective} with num_class {num_class}");
            }
            (PostTransform::Softmax, Task::Classifier { labels: (0..num_class as i64).collect() }, |x| x)
        }
        "reg:squarederror" | "reg:linear" | "reg:absoluteerror" | "reg:pseudohubererror" | "reg:quantileerror" => {
            (PostTransform::None, Task::Regressor, |x| x)
        }
        other => bail!(
            "XGBoost objective `{other}` is not supported yet (supported: binary:logistic, reg:logistic, multi:softprob, multi:softmax, reg:squarederror, reg:absoluteerror, reg:pseudohubererror)"
        ),
    };
    let base_margin: Vec<f32> =
        (0..groups).map(|g| margin_of(*base_scores.get(g).or(base_scores.first()).unwrap_or(&0.5) as f32)).collect();
    let mut ir = Vec::with_capacity(tree_docs.len());
    for (t, tree) in tree_docs.iter().enumerate() {
        let group = tree_info[t];
        if group >= groups {
            bail!("tree {t} belongs to group {group}, but the model has {groups}");
        }
        if let Some(p) = tree.get("tree_param") {
            if p.get("size_leaf_vector").map(|v| num(v, "size_leaf_vector")).transpose()?.unwrap_or(1.0) > 1.0 {
                bail!("tree {t}: vector leaves (multi-target trees) are not supported yet");
            }
        }
        let left = array(tree, "left_children", t)?;
        let right = array(tree, "right_children", t)?;
        let index = array(tree, "split_indices", t)?;
        let cond = array(tree, "split_conditions", t)?;
        let default_left = array(tree, "default_left", t)?;
        let split_type = tree.get("split_type").and_then(|v| v.as_array());
        let n = left.len();
        if right.len() != n || index.len() != n || cond.len() != n || default_left.len() != n {
            bail!("tree {t}: node arrays have different lengths (the model is truncated or edited)");
        }
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let l = left[i].as_i64().with_context(|| format!("tree {t}, node {i}: bad left child"))?;
            let value = cond[i].as_f64().with_context(|| format!("tree {t}, node {i}: bad split condition"))? as f32;
            if l == -1 {
                nodes.push(IrNode::Leaf { weights: vec![(group as u32, value)] });
                continue;
            }
            if split_type.and_then(|s| s.get(i)).and_then(|v| v.as_i64()).unwrap_or(0) != 0 {
                bail!("tree {t}, node {i}: categorical splits are not supported yet");
            }
            let r = right[i].as_i64().with_context(|| format!("tree {t}, node {i}: bad right child"))?;
            let f = index[i].as_u64().with_context(|| format!("tree {t}, node {i}: bad split index"))?;
            // never truncated: an index beyond u32 is refused here, one beyond
            // the input width by the layout
            let f =
                u32::try_from(f).map_err(|_| anyhow::anyhow!("tree {t}, node {i}: split index {f} is out of range"))?;
            if l < 0 || r < 0 {
                bail!("tree {t}, node {i}: child index {} is negative", l.min(r));
            }
            let dl = match &default_left[i] {
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_u64() == Some(1),
                other => bail!("tree {t}, node {i}: bad default_left {other}"),
            };
            // XGBoost: x < threshold goes left; a missing value follows default_left
            nodes.push(IrNode::Split {
                feature: f,
                threshold: value,
                op: trees::OP_LT,
                missing_first: dl,
                first: l as usize,
                second: r as usize,
            });
        }
        ir.push(nodes);
    }
    let forest = forest::layout(&ir, num_feature, groups, base_margin, post, task.clone())
        .map_err(|e| anyhow::anyhow!("invalid XGBoost model: {e}"))?;
    let output_names = match task {
        Task::Classifier { .. } => vec!["label".into(), "probabilities".into()],
        Task::Regressor => vec!["predictions".into()],
    };
    Ok(TreeModel { forest, ir, input_name: "features".into(), output_names })
}

/// Decodes UBJSON (Draft 12, as XGBoost writes it: big-endian numbers,
/// optimised `$type#count` containers) into a JSON value. Bounded: depth 64,
/// and no count may claim more elements than bytes remain.
pub fn ubjson(data: &[u8]) -> Result<Value, String> {
    struct R<'a> {
        d: &'a [u8],
        p: usize,
    }
    impl R<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], String> {
            if self.d.len() - self.p < n {
                return Err(format!("truncated at byte {}", self.p));
            }
            let s = &self.d[self.p..self.p + n];
            self.p += n;
            Ok(s)
        }
        fn byte(&mut self) -> Result<u8, String> {
            Ok(self.take(1)?[0])
        }
        fn int(&mut self, marker: u8) -> Result<i64, String> {
            Ok(match marker {
                b'i' => self.take(1)?[0] as i8 as i64,
                b'U' => self.take(1)?[0] as i64,
                b'I' => i16::from_be_bytes(self.take(2)?.try_into().unwrap()) as i64,
                b'l' => i32::from_be_bytes(self.take(4)?.try_into().unwrap()) as i64,
                b'L' => i64::from_be_bytes(self.take(8)?.try_into().unwrap()),
                m => return Err(format!("expected an integer marker, found {:?} at byte {}", m as char, self.p - 1)),
            })
        }
        fn count(&mut self, marker: u8) -> Result<usize, String> {
            let n = self.int(marker)?;
            if n < 0 || n as usize > self.d.len() - self.p + 1 {
                return Err(format!("implausible length {n} at byte {}", self.p));
            }
            Ok(n as usize)
        }
        fn value(&mut self, mut marker: u8, depth: usize) -> Result<Value, String> {
            if depth > 64 {
                return Err("nesting deeper than 64".into());
            }
            // no-op markers before a value: skipped in a loop (recursing on each
            // overflowed the stack on a run of them; found by the xgboost fuzz target)
            while marker == b'N' {
                marker = self.byte()?;
            }
            Ok(match marker {
                b'Z' => Value::Null,
                b'T' => Value::Bool(true),
                b'F' => Value::Bool(false),
                b'i' | b'U' | b'I' | b'l' | b'L' => Value::from(self.int(marker)?),
                b'd' => Value::from(f32::from_be_bytes(self.take(4)?.try_into().unwrap()) as f64),
                b'D' => Value::from(f64::from_be_bytes(self.take(8)?.try_into().unwrap())),
                b'C' => Value::String((self.byte()? as char).to_string()),
                b'S' | b'H' => {
                    let m = self.byte()?;
                    let n = self.count(m)?;
                    Value::String(
                        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "string is not UTF-8".to_string())?,
                    )
                }
                b'[' | b'{' => {
                    let object = marker == b'{';
                    let end = if object { b'}' } else { b']' };
                    let mut ty = None;
                    let mut count = None;
                    if self.d.get(self.p) == Some(&b'$') {
                        self.p += 1;
                        ty = Some(self.byte()?);
                        if self.d.get(self.p) != Some(&b'#') {
                            return Err("typed container without a count".into());
                        }
                    }
                    if self.d.get(self.p) == Some(&b'#') {
                        self.p += 1;
                        let m = self.byte()?;
                        count = Some(self.count(m)?);
                    }
                    let mut arr = Vec::new();
                    let mut obj = serde_json::Map::new();
                    let mut i = 0;
                    loop {
                        match count {
                            Some(c) if i == c => break,
                            Some(_) => {}
                            None => {
                                if self.d.get(self.p) == Some(&end) {
                                    self.p += 1;
                                    break;
                                }
                            }
                        }
                        let key = if object {
                            let km = self.byte()?;
                            let n = self.count(km)?;
                            Some(
                                String::from_utf8(self.take(n)?.to_vec())
                                    .map_err(|_| "key is not UTF-8".to_string())?,
                            )
                        } else {
                            None
                        };
                        let m = match ty {
                            Some(t) => t,
                            None => self.byte()?,
                        };
                        let v = self.value(m, depth + 1)?;
                        match key {
                            Some(k) => {
                                obj.insert(k, v);
                            }
                            None => arr.push(v),
                        }
                        i += 1;
                    }
                    if object {
                        Value::Object(obj)
                    } else {
                        Value::Array(arr)
                    }
                }
                m => return Err(format!("unknown marker {:?} at byte {}", m as char, self.p - 1)),
            })
        }
    }
    let mut r = R { d: data, p: 0 };
    let m = r.byte()?;
    let v = r.value(m, 0)?;
    if r.p != data.len() {
        return Err(format!("{} trailing bytes", data.len() - r.p));
    }
    Ok(v)
}

fn logit(p: f32) -> f32 {
    // as XGBoost's ProbToMargin for logistic objectives, in f32
    -(1.0f32 / p - 1.0f32).ln()
}

// ------------------------------------------------------------------ LightGBM

/// Parses LightGBM's text model format (`Booster.save_model()`). Errors do
/// not name the file: the caller does.
pub fn lightgbm_text(path: &Path) -> Result<TreeModel> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("not a LightGBM text model ({e})"))?;
    lightgbm_str(&text)
}

/// [`lightgbm_text`] on the file's text.
pub fn lightgbm_str(text: &str) -> Result<TreeModel> {
    let mut blocks = text.split("\nTree=");
    let header = blocks.next().unwrap_or("");
    if !header.starts_with("tree") {
        bail!("not a LightGBM text model (it does not start with `tree`)");
    }
    let kv = |block: &str| -> BTreeMap<String, String> {
        block
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    };
    let h = kv(header);
    let get_usize = |m: &BTreeMap<String, String>, k: &str| -> Result<usize> {
        m.get(k)
            .with_context(|| format!("LightGBM model has no `{k}`"))?
            .parse::<usize>()
            .with_context(|| format!("`{k}` is not a number"))
    };
    let num_class = get_usize(&h, "num_class")?;
    if num_class > MAX_CLASSES {
        bail!("num_class {num_class} is out of range (at most {MAX_CLASSES})");
    }
    let per_iter = get_usize(&h, "num_tree_per_iteration")?.max(1);
    let max_feature_idx = get_usize(&h, "max_feature_idx")?;
    if max_feature_idx >= MAX_FEATURES {
        bail!("max_feature_idx {max_feature_idx} is out of range (below {MAX_FEATURES})");
    }
    let num_features = max_feature_idx + 1;
    let objective = h.get("objective").cloned().unwrap_or_default();
    let mut obj = objective.split_whitespace();
    let obj_name = obj.next().unwrap_or("");
    let obj_params: BTreeMap<&str, &str> = obj.filter_map(|p| p.split_once(':')).collect();
    let mut scale = 1.0f64;
    let (post, task, groups) = match obj_name {
        "binary" => {
            scale = obj_params.get("sigmoid").map(|s| s.parse::<f64>()).transpose().context("bad sigmoid parameter")?.unwrap_or(1.0);
            (PostTransform::BinarySigmoid, Task::Classifier { labels: vec![0, 1] }, 1)
        }
        "multiclass" | "softmax" => (PostTransform::Softmax, Task::Classifier { labels: (0..num_class as i64).collect() }, num_class),
        "cross_entropy" | "xentropy" => (PostTransform::Sigmoid, Task::Regressor, 1),
        "regression" | "regression_l2" | "l2" | "mean_squared_error" | "mse" | "regression_l1" | "l1" | "huber" | "fair" | "quantile" | "mape"
        | "lambdarank" | "rank_xendcg" => (PostTransform::None, Task::Regressor, num_class.max(1)),
        other => bail!("LightGBM objective `{other}` is not supported yet (supported: binary, multiclass, regression and its variants, cross_entropy, ranking scores)"),
    };
    if groups != per_iter {
        bail!("LightGBM model has {per_iter} trees per iteration for {groups} outputs");
    }
    let tree_blocks: Vec<&str> = blocks.map(|b| b.split("\nend of trees").next().unwrap_or(b)).collect();
    if tree_blocks.is_empty() {
        bail!("LightGBM model has no trees");
    }
    if h.contains_key("average_output") {
        scale /= (tree_blocks.len() / per_iter).max(1) as f64;
    }
    let mut ir = Vec::with_capacity(tree_blocks.len());
    for (t, block) in tree_blocks.iter().enumerate() {
        let m = kv(block);
        let group = (t % per_iter) as u32;
        let leaves = get_usize(&m, "num_leaves").with_context(|| format!("tree {t}"))?;
        let list = |k: &str| -> Result<Vec<f64>> {
            m.get(k)
                .with_context(|| format!("tree {t}: `{k}` is missing (the model is truncated or edited)"))?
                .split_whitespace()
                .map(|v| v.parse::<f64>().with_context(|| format!("tree {t}: `{k}` holds `{v}`, not a number")))
                .collect()
        };
        let leaf_value = list("leaf_value")?;
        if leaf_value.len() != leaves {
            bail!("tree {t}: {} leaf values for {leaves} leaves", leaf_value.len());
        }
        if leaves == 1 {
            ir.push(vec![IrNode::Leaf { weights: vec![(group, (leaf_value[0] * scale) as f32)] }]);
            continue;
        }
        if m.get("is_linear").is_some_and(|v| v != "0") {
            bail!("tree {t}: linear trees are not supported yet");
        }
        if m.get("num_cat").is_some_and(|v| v != "0") {
            bail!("tree {t}: categorical splits are not supported yet");
        }
        let internal = leaves - 1;
        let feature = list("split_feature")?;
        let threshold = list("threshold")?;
        let decision = list("decision_type")?;
        let left = list("left_child")?;
        let right = list("right_child")?;
        for (k, v) in [
            ("split_feature", &feature),
            ("threshold", &threshold),
            ("decision_type", &decision),
            ("left_child", &left),
            ("right_child", &right),
        ] {
            if v.len() != internal {
                bail!(
                    "tree {t}: `{k}` has {} entries for {internal} splits (the model is truncated or edited)",
                    v.len()
                );
            }
        }
        let child = |c: f64| -> Result<usize> {
            let c = c as i64;
            let idx = if c >= 0 { c as usize } else { internal + (-c - 1) as usize };
            if idx >= internal + leaves {
                bail!("tree {t}: child {c} is out of range");
            }
            Ok(idx)
        };
        let mut nodes = Vec::with_capacity(internal + leaves);
        for i in 0..internal {
            let dt = decision[i] as u32;
            // a feature index is a whole number in u32's range; never saturated
            let fi = feature[i];
            if !(fi >= 0.0 && fi.fract() == 0.0 && fi <= u32::MAX as f64) {
                bail!("tree {t}, split {i}: split_feature {fi} is not a feature index");
            }
            if dt & 1 != 0 {
                bail!("tree {t}, split {i}: categorical splits are not supported yet");
            }
            let default_left = dt & 2 != 0;
            // LightGBM compares the feature, as a double, with a double threshold:
            // x <= t holds for an f32 x exactly when x <= (t rounded down to f32)
            let t64 = threshold[i];
            let mut t32 = t64 as f32;
            if t32 as f64 > t64 {
                t32 = t32.next_down();
            }
            let missing_first = match (dt >> 2) & 3 {
                0 => 0.0 <= t64, // no missing type: NaN is read as 0.0
                2 => default_left,
                _ => bail!("tree {t}, split {i}: zero-as-missing splits are not supported yet"),
            };
            nodes.push(IrNode::Split {
                feature: fi as u32,
                threshold: t32,
                op: trees::OP_LE,
                missing_first,
                first: child(left[i])?,
                second: child(right[i])?,
            });
        }
        for v in &leaf_value {
            nodes.push(IrNode::Leaf { weights: vec![(group, (v * scale) as f32)] });
        }
        ir.push(nodes);
    }
    let forest = forest::layout(&ir, num_features, groups, vec![0.0; groups], post, task.clone())
        .map_err(|e| anyhow::anyhow!("invalid LightGBM model: {e}"))?;
    let output_names = match task {
        Task::Classifier { .. } => vec!["label".into(), "probabilities".into()],
        Task::Regressor => vec!["predictions".into()],
    };
    Ok(TreeModel { forest, ir, input_name: "features".into(), output_names })
}

// ------------------------------------------------------------------ ONNX-ML

/// True when the graph holds a tree-ensemble operator.
pub fn has_tree_ops(graph: &pb::GraphProto) -> bool {
    graph.node.iter().any(|n| n.op_type.starts_with("TreeEnsemble"))
}

struct Attrs<'a>(&'a pb::NodeProto);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&pb::AttributeProto> {
        self.0.attribute.iter().find(|a| a.name == name)
    }
    fn ints(&self, name: &str) -> Vec<i64> {
        self.get(name).map(|a| a.ints.clone()).unwrap_or_default()
    }
    fn floats(&self, name: &str) -> Result<Vec<f32>> {
        if let Some(a) = self.get(name) {
            return Ok(a.floats.clone());
        }
        if let Some(a) = self.get(&format!("{name}_as_tensor")) {
            let t = a.t.as_ref().context("tensor attribute without tensor")?;
            let t = tract_onnx::tensor::load_tensor(&*tract_onnx::onnx().provider, t, None)?;
            let t = t.cast_to::<f32>()?;
            return Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec());
        }
        Ok(vec![])
    }
    fn strings(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|a| a.strings.iter().map(|s| String::from_utf8_lossy(s).to_string()).collect())
            .unwrap_or_default()
    }
    fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(|a| String::from_utf8_lossy(&a.s).to_string())
    }
}

/// Imports a graph made of one TreeEnsembleClassifier/Regressor, optionally
/// followed by Identity, Cast or ZipMap nodes (converter post-processing;
/// ZipMap's sequence of maps is replaced by the probability tensor itself).
pub fn onnx_ml(graph: &pb::GraphProto, num_features_hint: Option<usize>) -> Result<TreeModel> {
    let tree_nodes: Vec<&pb::NodeProto> = graph.node.iter().filter(|n| n.op_type.starts_with("TreeEnsemble")).collect();
    let [node] = tree_nodes.as_slice() else {
        bail!("graph has {} tree-ensemble operators; neoc supports one per model", tree_nodes.len())
    };
    let others: Vec<String> = graph
        .node
        .iter()
        .filter(|n| {
            !n.op_type.starts_with("TreeEnsemble") && !["Identity", "Cast", "ZipMap"].contains(&n.op_type.as_str())
        })
        .map(|n| format!("`{}` ({})", n.name, n.op_type))
        .collect();
    if !others.is_empty() {
        bail!("tree-ensemble graphs may only add Identity, Cast or ZipMap nodes; this one also has {} (pipelines mixing trees and other operators are not supported yet)", others.join(", "));
    }
    let a = Attrs(node);
    let input = graph.input.first().context("graph has no input")?;
    let input_name = input.name.clone();
    let width = input
        .r#type
        .as_ref()
        .and_then(|t| match &t.value {
            Some(pb::type_proto::Value::TensorType(tt)) => tt.shape.as_ref(),
            _ => None,
        })
        .and_then(|s| s.dim.get(1))
        .and_then(|d| match &d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(*v as usize),
            _ => None,
        });
    if node.op_type == "TreeEnsemble" {
        return tree_ensemble_v5(graph, node, input_name, width, num_features_hint);
    }
    let tree_ids = a.ints("nodes_treeids");
    let node_ids = a.ints("nodes_nodeids");
    let features = a.ints("nodes_featureids");
    let values = a.floats("nodes_values")?;
    let modes = a.strings("nodes_modes");
    let trues = a.ints("nodes_truenodeids");
    let falses = a.ints("nodes_falsenodeids");
    let missing = a.ints("nodes_missing_value_tracks_true");
    let n = tree_ids.len();
    for (name, len) in [
        ("nodes_nodeids", node_ids.len()),
        ("nodes_featureids", features.len()),
        ("nodes_values", values.len()),
        ("nodes_modes", modes.len()),
        ("nodes_truenodeids", trues.len()),
        ("nodes_falsenodeids", falses.len()),
    ] {
        if len != n {
            bail!("node `{}`: {name} has {len} entries, nodes_treeids {n}", node.name);
        }
    }
    let classifier = node.op_type == "TreeEnsembleClassifier";

    let (w_tree, w_node, w_id, w_weight) = if classifier {
        (a.ints("class_treeids"), a.ints("class_nodeids"), a.ints("class_ids"), a.floats("class_weights")?)
    } else {
        (a.ints("target_treeids"), a.ints("target_nodeids"), a.ints("target_ids"), a.floats("target_weights")?)
    };
    if w_node.len() != w_tree.len() || w_id.len() != w_tree.len() || w_weight.len() != w_tree.len() {
        bail!("node `{}`: leaf weight attributes have different lengths", node.name);
    }
    // group trees by id, nodes by (tree, node id)
    let mut trees_by_id: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, id) in tree_ids.iter().enumerate().take(n) {
        trees_by_id.entry(*id).or_default().push(i);
    }
    let distinct_ids: std::collections::BTreeSet<i64> = w_id.iter().cloned().collect();
    let labels = a.ints("classlabels_int64s");
    if classifier && labels.is_empty() {
        bail!("node `{}`: string class labels are not supported yet (use integer labels)", node.name);
    }
    let post = a.string("post_transform").unwrap_or_else(|| "NONE".into());
    let base_values = a.floats("base_values")?;
    let all_positive = w_weight.iter().all(|w| *w >= 0.0);
    let binary = classifier && labels.len() == 2 && distinct_ids.len() == 1;
    type GroupOf = Box<dyn Fn(i64) -> Option<u32>>;
    let (groups, post_transform, task, id_to_group): (usize, PostTransform, Task, GroupOf) = if classifier {
        if binary {
            let pt = match (post.as_str(), all_positive) {
                ("LOGISTIC", false) => PostTransform::BinarySigmoidSymmetric,
                (p, _) => bail!("binary TreeEnsembleClassifier with post_transform {p}{} is not supported yet (LOGISTIC with signed weights, as XGBoost exports, is)", if all_positive { " and only non-negative weights" } else { "" }),
            };
            if base_values.len() > 1 {
                bail!("binary TreeEnsembleClassifier with {} base_values is not supported yet", base_values.len());
            }
            (1, pt, Task::Classifier { labels: labels.clone() }, Box::new(|_| Some(0)))
        } else {
            let pt = match post.as_str() {
                "NONE" => PostTransform::None,
                "LOGISTIC" => PostTransform::Sigmoid,
                "SOFTMAX" => PostTransform::Softmax,
                p => bail!("TreeEnsembleClassifier post_transform {p} is not supported yet"),
            };
            let k = labels.len();
            (
                k,
                pt,
                Task::Classifier { labels: labels.clone() },
                Box::new(move |id| (id >= 0 && (id as usize) < k).then_some(id as u32)),
            )
        }
    } else {
        let targets = a.get("n_targets").map(|x| x.i as usize).unwrap_or(1).max(1);
        if post != "NONE" {
            bail!("TreeEnsembleRegressor post_transform {post} is not supported yet");
        }
        if let Some(agg) = a.string("aggregate_function") {
            if agg != "SUM" {
                bail!("TreeEnsembleRegressor aggregate_function {agg} is not supported yet (SUM is)");
            }
        }
        (
            targets,
            PostTransform::None,
            Task::Regressor,
            Box::new(move |id| (id >= 0 && (id as usize) < targets).then_some(id as u32)),
        )
    };
    let mut base_margin = vec![0f32; groups];
    if !base_values.is_empty() {
        if base_values.len() != groups {
            bail!("node `{}`: {} base_values for {groups} outputs", node.name, base_values.len());
        }
        base_margin = base_values.clone();
    }
    let mut leaf_weights: BTreeMap<(i64, i64), Vec<(u32, f32)>> = BTreeMap::new();
    for k in 0..w_tree.len() {
        let g = id_to_group(w_id[k])
            .with_context(|| format!("node `{}`: leaf weight for unknown class/target {}", node.name, w_id[k]))?;
        leaf_weights.entry((w_tree[k], w_node[k])).or_default().push((g, w_weight[k]));
    }
    let mut ir = Vec::new();
    let mut max_feature = 0usize;
    for (tid, idx) in &trees_by_id {
        let local: BTreeMap<i64, usize> = idx.iter().enumerate().map(|(li, &gi)| (node_ids[gi], li)).collect();
        if local.len() != idx.len() {
            bail!("tree {tid}: duplicate node ids");
        }
        let child = |id: i64, from: i64| -> Result<usize> {
            local.get(&id).copied().with_context(|| format!("tree {tid}, node {from}: child {id} does not exist"))
        };
        let mut nodes = Vec::with_capacity(idx.len());
        let mut is_child = vec![false; idx.len()];
        for &gi in idx {
            let mode = modes[gi].as_str();
            if mode == "LEAF" {
                nodes.push(IrNode::Leaf { weights: leaf_weights.remove(&(*tid, node_ids[gi])).unwrap_or_default() });
                continue;
            }
            let op = match mode {
                "BRANCH_LT" => trees::OP_LT,
                "BRANCH_LEQ" => trees::OP_LE,
                "BRANCH_GT" => trees::OP_GT,
                "BRANCH_GTE" => trees::OP_GE,
                "BRANCH_EQ" => trees::OP_EQ,
                "BRANCH_NEQ" => trees::OP_NE,
                other => bail!("tree {tid}, node {}: unknown mode {other}", node_ids[gi]),
            };
            let first = child(trues[gi], node_ids[gi])?;
            let second = child(falses[gi], node_ids[gi])?;
            is_child[first] = true;
            is_child[second] = true;
            if features[gi] < 0 || features[gi] > u32::MAX as i64 {
                bail!("tree {tid}, node {}: negative or out-of-range feature id {}", node_ids[gi], features[gi]);
            }
            max_feature = max_feature.max(features[gi] as usize);
            nodes.push(IrNode::Split {
                feature: features[gi] as u32,
                threshold: values[gi],
                op,
                missing_first: missing.get(gi).copied().unwrap_or(0) == 1,
                first,
                second,
            });
        }
        // the root is the node no other node points to; put it first
        let roots: Vec<usize> = (0..nodes.len()).filter(|i| !is_child[*i]).collect();
        let [root] = roots.as_slice() else {
            bail!("tree {tid} has {} roots (a cycle or a forest in one tree)", roots.len())
        };
        let nodes = reroot(nodes, *root);
        ir.push(nodes);
    }
    if !leaf_weights.is_empty() {
        let (t, nid) = leaf_weights.keys().next().unwrap();
        bail!("leaf weight for tree {t}, node {nid}, which is not a leaf");
    }
    let num_features = width.or(num_features_hint).unwrap_or(max_feature + 1);
    let forest = forest::layout(&ir, num_features, groups, base_margin, post_transform, task)
        .map_err(|e| anyhow::anyhow!("invalid tree ensemble in node `{}`: {e}", node.name))?;
    // outputs keep the graph's names; ZipMap/Cast/Identity are folded away
    let mut names: Vec<String> = node.output.clone();
    for out in &graph.output {
        let mut src = out.name.clone();
        while let Some(n) =
            graph.node.iter().find(|n| n.output.first() == Some(&src) && !n.op_type.starts_with("TreeEnsemble"))
        {
            src = n.input.first().cloned().unwrap_or_default();
        }
        if let Some(pos) = names.iter().position(|x| *x == src) {
            names[pos] = out.name.clone();
        }
    }
    let output_names =
        if classifier { names.into_iter().take(2).collect() } else { names.into_iter().take(1).collect() };
    Ok(TreeModel { forest, ir, input_name, output_names })
}

/// The ai.onnx.ml opset 5 `TreeEnsemble` operator: nodes and leaves in
/// separate arrays, one target and weight per leaf, output `[N, n_targets]`.
fn tree_ensemble_v5(
    graph: &pb::GraphProto,
    node: &pb::NodeProto,
    input_name: String,
    width: Option<usize>,
    num_features_hint: Option<usize>,
) -> Result<TreeModel> {
    let a = Attrs(node);
    let name = &node.name;
    let int_tensor = |k: &str| -> Result<Vec<i64>> {
        let Some(attr) = a.get(k) else { return Ok(vec![]) };
        let t = attr.t.as_ref().with_context(|| format!("node `{name}`: `{k}` is not a tensor"))?;
        let t = tract_onnx::tensor::load_tensor(&*tract_onnx::onnx().provider, t, None)?;
        let t = t.cast_to::<i64>()?;
        Ok(t.try_as_plain_ram()?.as_slice::<i64>()?.to_vec())
    };
    let float_tensor = |k: &str| -> Result<Vec<f32>> {
        let Some(attr) = a.get(k) else { return Ok(vec![]) };
        let t = attr.t.as_ref().with_context(|| format!("node `{name}`: `{k}` is not a tensor"))?;
        if t.data_type != pb::tensor_proto::DataType::Float as i32 {
            bail!("node `{name}`: `{k}` is not float32; double-precision tree ensembles are not supported yet");
        }
        let t = tract_onnx::tensor::load_tensor(&*tract_onnx::onnx().provider, t, None)?;
        Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
    };
    let modes = int_tensor("nodes_modes")?;
    let splits = float_tensor("nodes_splits")?;
    let weights = float_tensor("leaf_weights")?;
    let features = a.ints("nodes_featureids");
    let true_ids = a.ints("nodes_truenodeids");
    let false_ids = a.ints("nodes_falsenodeids");
    let true_leaf = a.ints("nodes_trueleafs");
    let false_leaf = a.ints("nodes_falseleafs");
    let missing = a.ints("nodes_missing_value_tracks_true");
    let leaf_targets = a.ints("leaf_targetids");
    let roots = a.ints("tree_roots");
    let n = modes.len();
    for (k, len) in [
        ("nodes_splits", splits.len()),
        ("nodes_featureids", features.len()),
        ("nodes_truenodeids", true_ids.len()),
        ("nodes_falsenodeids", false_ids.len()),
        ("nodes_trueleafs", true_leaf.len()),
        ("nodes_falseleafs", false_leaf.len()),
    ] {
        if len != n {
            bail!("node `{name}`: {k} has {len} entries, nodes_modes {n}");
        }
    }
    if leaf_targets.len() != weights.len() {
        bail!("node `{name}`: {} leaf targets for {} leaf weights", leaf_targets.len(), weights.len());
    }
    let targets = a.get("n_targets").map(|x| x.i as usize).unwrap_or(1).max(1);
    let post = match a.get("post_transform").map(|x| x.i).unwrap_or(0) {
        0 => PostTransform::None,
        1 => PostTransform::Softmax,
        2 => PostTransform::Sigmoid,
        p => bail!("node `{name}`: post_transform {p} (SOFTMAX_ZERO or PROBIT) is not supported yet"),
    };
    let mut scale = 1.0f32;
    match a.get("aggregate_function").map(|x| x.i).unwrap_or(1) {
        1 => {}
        0 => scale = 1.0 / roots.len().max(1) as f32,
        f => bail!("node `{name}`: aggregate_function {f} (MIN or MAX) is not supported yet"),
    }
    let mut ir = Vec::with_capacity(roots.len());
    let mut max_feature = 0usize;
    for (t, &root) in roots.iter().enumerate() {
        if root < 0 || root as usize >= n {
            bail!("tree {t}: root {root} is out of range");
        }
        // depth-first from the root; a split reached twice is a cycle or a shared subtree
        let mut nodes: Vec<IrNode> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut stack = vec![(root as usize, false, usize::MAX, false)];
        while let Some((idx, is_leaf, parent, is_second)) = stack.pop() {
            let me = nodes.len();
            if let Some(IrNode::Split { first, second, .. }) = (parent != usize::MAX).then(|| &mut nodes[parent]) {
                if is_second {
                    *second = me
                } else {
                    *first = me
                }
            }
            if is_leaf {
                let target = *leaf_targets.get(idx).with_context(|| format!("tree {t}: leaf {idx} is out of range"))?;
                if target < 0 || target as usize >= targets {
                    bail!("tree {t}: leaf {idx} targets {target} of {targets}");
                }
                nodes.push(IrNode::Leaf { weights: vec![(target as u32, weights[idx] * scale)] });
                continue;
            }
            if !seen.insert(idx) {
                bail!("tree {t}: node {idx} is reached twice (a cycle or a shared node)");
            }
            let op = match modes[idx] {
                0 => trees::OP_LE,
                1 => trees::OP_LT,
                2 => trees::OP_GE,
                3 => trees::OP_GT,
                4 => trees::OP_EQ,
                5 => trees::OP_NE,
                6 => bail!("tree {t}, node {idx}: set-membership (categorical) splits are not supported yet"),
                m => bail!("tree {t}, node {idx}: unknown mode {m}"),
            };
            if features[idx] < 0 || features[idx] > u32::MAX as i64 {
                bail!("tree {t}, node {idx}: negative or out-of-range feature id {}", features[idx]);
            }
            max_feature = max_feature.max(features[idx] as usize);
            let child = |id: i64, leaf: i64| -> Result<(usize, bool)> {
                let limit = if leaf == 1 { weights.len() } else { n };
                if id < 0 || id as usize >= limit {
                    bail!("tree {t}, node {idx}: child {id} is out of range");
                }
                Ok((id as usize, leaf == 1))
            };
            let (tc, tl) = child(true_ids[idx], true_leaf[idx])?;
            let (fc, fl) = child(false_ids[idx], false_leaf[idx])?;
            nodes.push(IrNode::Split {
                feature: features[idx] as u32,
                threshold: splits[idx],
                op,
                missing_first: missing.get(idx).copied().unwrap_or(0) == 1,
                first: usize::MAX,
                second: usize::MAX,
            });
            stack.push((fc, fl, me, true));
            stack.push((tc, tl, me, false));
        }
        ir.push(nodes);
    }
    let num_features = width.or(num_features_hint).unwrap_or(max_feature + 1);
    let forest = forest::layout(&ir, num_features, targets, vec![0.0; targets], post, Task::Regressor)
        .map_err(|e| anyhow::anyhow!("invalid tree ensemble in node `{name}`: {e}"))?;
    let out = graph.output.first().map(|o| o.name.clone()).unwrap_or_else(|| node.output[0].clone());
    Ok(TreeModel { forest, ir, input_name, output_names: vec![out] })
}

/// Renumbers a tree so that `root` is node 0.
fn reroot(nodes: Vec<IrNode>, root: usize) -> Vec<IrNode> {
    if root == 0 {
        return nodes;
    }
    let map = |i: usize| {
        if i == root {
            0
        } else if i == 0 {
            root
        } else {
            i
        }
    };
    let mut out = nodes;
    out.swap(0, root);
    for n in out.iter_mut() {
        if let IrNode::Split { first, second, .. } = n {
            *first = map(*first);
            *second = map(*second);
        }
    }
    out
}

/// Direct evaluation of the imported trees (source node ids, no layout): the
/// reference the compiled forest is verified against.
pub fn reference_margins(ir: &[Vec<IrNode>], forest: &Forest, x: &[f32], rows: usize) -> Vec<f32> {
    let g = forest.num_groups;
    let nf = forest.num_features;
    let mut m: Vec<f32> = (0..rows).flat_map(|_| forest.base_margin.iter().cloned()).collect();
    for tree in ir {
        for r in 0..rows {
            let row = &x[r * nf..(r + 1) * nf];
            let mut i = 0;
            let mut steps = 0;
            while let IrNode::Split { feature, threshold, op, missing_first, first, second } = &tree[i] {
                let v = row[*feature as usize];
                let t = *threshold;
                let go_first = if v.is_nan() && (*missing_first || *op == trees::OP_NE) {
                    true
                } else {
                    match *op {
                        trees::OP_LT => v < t,
                        trees::OP_LE => v <= t,
                        trees::OP_GT => v > t,
                        trees::OP_GE => v >= t,
                        trees::OP_EQ => v == t,
                        _ => v != t,
                    }
                };
                i = if go_first { *first } else { *second };
                steps += 1;
                assert!(steps <= tree.len(), "layout() refuses cycles");
            }
            if let IrNode::Leaf { weights } = &tree[i] {
                for (grp, w) in weights {
                    m[r * g + *grp as usize] += w;
                }
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_run_of_no_op_markers_does_not_overflow_the_stack() {
        // 1 MiB of `N` then a value: once a recursion per marker
        let mut data = vec![b'N'; 1 << 20];
        data.extend_from_slice(b"T");
        assert_eq!(ubjson(&data).unwrap(), Value::Bool(true));
        assert!(ubjson(&vec![b'N'; 1 << 20]).is_err());
    }

    #[test]
    fn ubjson_decodes_xgboost_style_containers() {
        // {"a": [1.5f32, 2.5f32] as a typed array, "b": "x", "c": [int8 -3, true]}
        let mut d = vec![b'{', b'i', 1, b'a', b'[', b'$', b'd', b'#', b'i', 2];
        d.extend(1.5f32.to_be_bytes());
        d.extend(2.5f32.to_be_bytes());
        d.extend([b'i', 1, b'b', b'S', b'i', 1, b'x', b'i', 1, b'c', b'[', b'i', 0xfd, b'T', b']', b'}']);
        let v = ubjson(&d).unwrap();
        assert_eq!(v, serde_json::json!({"a": [1.5, 2.5], "b": "x", "c": [-3, true]}));
    }

    #[test]
    fn malformed_ubjson_is_an_error_not_a_panic() {
        assert!(ubjson(b"{i\x01a[$d#l\x7f\xff\xff\xff").unwrap_err().contains("implausible length"));
        assert!(ubjson(b"{i\x01aS").unwrap_err().contains("truncated"));
        assert!(ubjson(b"{i\x01a?}").unwrap_err().contains("unknown marker"));
        let deep: Vec<u8> = std::iter::repeat_n(b'[', 200).collect();
        assert!(ubjson(&deep).unwrap_err().contains("deeper"));
        assert!(ubjson(b"Z!").unwrap_err().contains("trailing"));
        for cut in 0..12 {
            let _ = ubjson(&b"{i\x01a[$d#i\x01\x3f\x80\x00\x00}"[..cut]);
        }
    }
}
