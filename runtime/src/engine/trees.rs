//! The `trees` engine: neoc's own evaluator for gradient-boosted trees and
//! random forests (XGBoost, ONNX-ML tree ensembles).
//!
//! A forest is stored as flat arrays in one JSON document (`model.trees.json`).
//! Nodes of a tree are laid out so that a split's two children are adjacent
//! (`left` and `left + 1`) and always come after it: a walk only moves
//! forward, so it terminates, and the hot path is one compare and one add per
//! level. The loader checks every index before anything runs.
//!
//! Semantics (shared by every source): a split sends a row to its first child
//! when `x op threshold` holds (`op` one of `<`, `<=`, `>`, `>=`, `==`, `!=`,
//! compared in f32 as XGBoost and onnxruntime do), or when `x` is NaN and the
//! split's missing-value direction is the first child. Leaves add weights to
//! per-group margins, which start at `base_margin`; the post-transform turns
//! margins into outputs.

use serde::{Deserialize, Serialize};

/// Value of [`Forest::format`].
pub const FORMAT: &str = "neoc-trees";
/// Name of the engine in manifests.
pub const ENGINE_NAME: &str = "trees";
pub const MODEL_FORMAT: &str = "neoc-trees-json";
pub const VERSION: u32 = 1;

pub const OP_LT: u8 = 0;
pub const OP_LE: u8 = 1;
pub const OP_GT: u8 = 2;
pub const OP_GE: u8 = 3;
pub const OP_EQ: u8 = 4;
pub const OP_NE: u8 = 5;
/// Flag bit: NaN goes to the first child.
pub const MISSING_FIRST: u8 = 0x08;
/// Flag bit: the node is a leaf; `left` indexes `leaf_group`/`leaf_value`,
/// `feature` is the number of (group, value) pairs.
pub const LEAF: u8 = 0x80;

/// How margins become outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostTransform {
    /// Margins are the outputs (regression).
    None,
    /// One margin `m`: probabilities `[1 - σ(m), σ(m)]` (XGBoost binary:logistic).
    BinarySigmoid,
    /// One margin `m`: probabilities `[σ(-m), σ(m)]` (onnxruntime's binary
    /// TreeEnsembleClassifier with LOGISTIC).
    BinarySigmoidSymmetric,
    /// Sigmoid of each margin.
    Sigmoid,
    /// Softmax over the groups (multi-class).
    Softmax,
}

/// What the model predicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// Outputs: `label` (i64, from the probabilities' argmax) and `probabilities` (f32).
    Classifier { labels: Vec<i64> },
    /// Output: one f32 per group.
    Regressor,
}

/// A compiled forest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    pub format: String,
    pub version: u32,
    pub num_features: usize,
    pub num_groups: usize,
    #[serde(with = "crate::tensors::floats")]
    pub base_margin: Vec<f32>,
    pub post_transform: PostTransform,
    pub task: Task,
    /// Index of each tree's root in the node arrays.
    pub roots: Vec<u32>,
    /// Per node.
    pub feature: Vec<u32>,
    #[serde(with = "crate::tensors::floats")]
    pub threshold: Vec<f32>,
    pub left: Vec<u32>,
    pub flags: Vec<u8>,
    /// Leaf weights: group and value.
    pub leaf_group: Vec<u32>,
    #[serde(with = "crate::tensors::floats")]
    pub leaf_value: Vec<f32>,
}

impl Forest {
    /// Checks every index and value so that evaluation cannot go out of
    /// bounds or loop; a forest that passes is safe to run on any input.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT || self.version != VERSION {
            return Err(format!("not a {FORMAT} v{VERSION} document (format {:?} v{})", self.format, self.version));
        }
        let n = self.feature.len();
        if self.threshold.len() != n || self.left.len() != n || self.flags.len() != n {
            return Err("node arrays have different lengths".into());
        }
        if self.leaf_group.len() != self.leaf_value.len() {
            return Err("leaf arrays have different lengths".into());
        }
        if self.num_groups == 0 || self.base_margin.len() != self.num_groups {
            return Err(format!("base_margin has {} values for {} groups", self.base_margin.len(), self.num_groups));
        }
        if self.num_features == 0 {
            return Err("forest reads no features".into());
        }
        let binary =
            matches!(self.post_transform, PostTransform::BinarySigmoid | PostTransform::BinarySigmoidSymmetric);
        match (&self.task, binary) {
            (Task::Classifier { labels }, true) if self.num_groups != 1 || labels.len() != 2 => {
                return Err("binary classifier needs one group and two labels".into());
            }
            (Task::Classifier { labels }, false) if labels.len() != self.num_groups || labels.len() < 2 => {
                return Err(format!("classifier has {} labels for {} groups", labels.len(), self.num_groups));
            }
            (Task::Regressor, true) => return Err("binary post-transform on a regressor".into()),
            _ => {}
        }
        for &r in &self.roots {
            if r as usize >= n {
                return Err(format!("tree root {r} is beyond the {n} nodes"));
            }
        }
        for i in 0..n {
            let f = self.flags[i];
            if f & LEAF != 0 {
                let start = self.left[i] as usize;
                let count = self.feature[i] as usize;
                if start.checked_add(count).is_none_or(|e| e > self.leaf_value.len()) {
                    return Err(format!("leaf {i} points beyond the leaf table"));
                }
                for k in start..start + count {
                    if self.leaf_group[k] as usize >= self.num_groups {
                        return Err(format!("leaf {i} adds to group {} of {}", self.leaf_group[k], self.num_groups));
                    }
                }
            } else {
                if f & 0x07 > OP_NE || f & 0x70 != 0 {
                    return Err(format!("node {i} has unknown flags {f:#x}"));
                }
                if self.feature[i] as usize >= self.num_features {
                    return Err(format!("node {i} reads feature {} of {}", self.feature[i], self.num_features));
                }
                let l = self.left[i] as usize;
                if l <= i || l + 1 >= n {
                    return Err(format!("node {i} has children {l},{} out of order or out of range", l + 1));
                }
            }
        }
        Ok(())
    }

    pub fn num_trees(&self) -> usize {
        self.roots.len()
    }

    /// Width of the probabilities (classifier) or predictions (regressor) output.
    pub fn output_width(&self) -> usize {
        match (&self.task, self.post_transform) {
            (Task::Classifier { labels }, _) => labels.len(),
            (Task::Regressor, _) => self.num_groups,
        }
    }

    /// Post-transform and labels, from margins (`rows × num_groups`).
    pub fn finish(&self, m: Vec<f32>, rows: usize) -> (Vec<i64>, Vec<f32>) {
        let g = self.num_groups;
        let w = self.output_width();
        let mut out = Vec::with_capacity(rows * w);
        for r in 0..rows {
            let mr = &m[r * g..(r + 1) * g];
            match self.post_transform {
                PostTransform::None => out.extend_from_slice(mr),
                PostTransform::BinarySigmoid => {
                    let p = sigmoid(mr[0]);
                    out.extend_from_slice(&[1.0 - p, p]);
                }
                PostTransform::BinarySigmoidSymmetric => out.extend_from_slice(&[sigmoid(-mr[0]), sigmoid(mr[0])]),
                PostTransform::Sigmoid => out.extend(mr.iter().map(|v| sigmoid(*v))),
                PostTransform::Softmax => {
                    let max = mr.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = mr.iter().map(|v| (v - max).exp()).collect();
                    let s: f32 = e.iter().sum();
                    out.extend(e.iter().map(|v| v / s));
                }
            }
        }
        let labels = match &self.task {
            Task::Classifier { labels } => (0..rows)
                .map(|r| {
                    let p = &out[r * w..(r + 1) * w];
                    let mut best = 0;
                    for (k, v) in p.iter().enumerate() {
                        if *v > p[best] {
                            best = k;
                        }
                    }
                    labels[best]
                })
                .collect(),
            Task::Regressor => vec![],
        };
        (labels, out)
    }
}

/// A split or leaf as the evaluator reads it: one 16-byte load per level.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))] // never straddles a cache line
struct Node {
    threshold: f32,
    feature: u32,
    /// first child; a leaf points at itself
    left: u32,
    /// bit 0: split (0 for leaves, which then absorb the walk); bit 1: NaN goes first
    bits: u32,
}

/// A validated forest in its evaluation layout.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub forest: Forest,
    nodes: Vec<Node>,
    /// per node: start and count in the leaf table (leaves only)
    leaf: Vec<(u32, u32)>,
    /// per tree: levels to walk so that every path ends on a leaf
    depth: Vec<u32>,
    /// the comparison every split uses, when it is the same for all
    uniform_op: Option<u8>,
}

impl Compiled {
    pub fn new(forest: Forest) -> Result<Compiled, String> {
        forest.validate()?;
        let n = forest.feature.len();
        let mut nodes = Vec::with_capacity(n);
        let mut leaf = vec![(0u32, 0u32); n];
        let mut ops = std::collections::BTreeSet::new();
        for (i, slot) in leaf.iter_mut().enumerate() {
            let f = forest.flags[i];
            if f & LEAF != 0 {
                nodes.push(Node { threshold: 0.0, feature: 0, left: i as u32, bits: 0 });
                *slot = (forest.left[i], forest.feature[i]);
            } else {
                ops.insert(f & 0x07);
                let missing = if f & MISSING_FIRST != 0 { 2 } else { 0 };
                nodes.push(Node {
                    threshold: forest.threshold[i],
                    feature: forest.feature[i],
                    left: forest.left[i],
                    bits: 1 | missing,
                });
            }
        }
        // height of every node; children come after parents, so go backwards
        let mut height = vec![0u32; n];
        for i in (0..n).rev() {
            if nodes[i].bits & 1 != 0 {
                let l = nodes[i].left as usize;
                height[i] = 1 + height[l].max(height[l + 1]);
            }
        }
        let depth = forest.roots.iter().map(|r| height[*r as usize]).collect();
        let uniform_op = if ops.len() <= 1 { Some(ops.into_iter().next().unwrap_or(OP_LT)) } else { None };
        Ok(Compiled { forest, nodes, leaf, depth, uniform_op })
    }

    /// Margins for `rows` rows of `num_features` f32 values each, row-major:
    /// `rows * num_groups` values. Trees are the outer loop so that one
    /// tree's nodes stay in cache while every row walks it; each walk is a
    /// fixed number of branch-free steps (leaves absorb), so the CPU overlaps
    /// the walks of consecutive rows.
    pub fn margins(&self, x: &[f32], rows: usize) -> Vec<f32> {
        match self.uniform_op {
            Some(OP_LT) => self.margins_op::<OP_LT>(x, rows),
            Some(OP_LE) => self.margins_op::<OP_LE>(x, rows),
            Some(OP_GT) => self.margins_op::<OP_GT>(x, rows),
            Some(OP_GE) => self.margins_op::<OP_GE>(x, rows),
            _ => self.margins_mixed(x, rows),
        }
    }

    /// One step of a walk: the next node from node `i` for the value `v`.
    #[inline(always)]
    fn step<const OP: u8>(&self, i: usize, row: &[f32]) -> usize {
        debug_assert!(i < self.nodes.len());
        // SAFETY: `i` is a root or a value this function returned, and
        // Forest::validate (run by Compiled::new) proved every root, every
        // `left` and `left + 1` of a split, and every leaf's self-index are
        // < nodes.len(), and every split's feature < num_features == row.len()
        // (margins_op slices rows of exactly num_features values; leaves read
        // feature 0, and num_features > 0 is validated too).
        let n = unsafe { *self.nodes.get_unchecked(i) };
        debug_assert!((n.feature as usize) < row.len());
        let v = unsafe { *row.get_unchecked(n.feature as usize) };
        let cmp = match OP {
            OP_LT => v < n.threshold,
            OP_LE => v <= n.threshold,
            OP_GT => v > n.threshold,
            _ => v >= n.threshold,
        };
        let first = cmp | (v.is_nan() & (n.bits & 2 != 0));
        (n.left + ((!first) as u32 & n.bits)) as usize
    }

    #[inline(always)]
    fn add_leaf(&self, i: usize, out: &mut [f32]) {
        let f = &self.forest;
        let (start, count) = self.leaf[i];
        for k in start as usize..(start + count) as usize {
            out[f.leaf_group[k] as usize] += f.leaf_value[k];
        }
    }

    /// Every row's margins, set to the base margin; checks `x` holds the rows.
    fn base_margins(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let f = &self.forest;
        assert!(x.len() >= rows * f.num_features, "{} values for {rows} rows of {}", x.len(), f.num_features);
        f.base_margin.iter().copied().cycle().take(rows * f.num_groups).collect()
    }

    fn margins_op<const OP: u8>(&self, x: &[f32], rows: usize) -> Vec<f32> {
        // 6 measured best here: 8 spills and runs 56 or 90 µs at batch 64 depending on
        // the process's address layout; 6 runs a steady 62 µs (bench/trees)
        const LANES: usize = 6;
        let f = &self.forest;
        let (g, nf) = (f.num_groups, f.num_features);
        let mut m = self.base_margins(x, rows);
        let row = |r: usize| &x[r * nf..(r + 1) * nf];
        if rows >= LANES {
            // LANES rows walk the same tree in lockstep: independent
            // dependency chains keep the core busy instead of waiting on loads
            for (t, &root) in f.roots.iter().enumerate() {
                let depth = self.depth[t];
                let mut r = 0;
                while r + LANES <= rows {
                    let xs: [&[f32]; LANES] = std::array::from_fn(|l| row(r + l));
                    let mut idx = [root as usize; LANES];
                    for _ in 0..depth {
                        for l in 0..LANES {
                            idx[l] = self.step::<OP>(idx[l], xs[l]);
                        }
                    }
                    for l in 0..LANES {
                        self.add_leaf(idx[l], &mut m[(r + l) * g..(r + l + 1) * g]);
                    }
                    r += LANES;
                }
                for r in r..rows {
                    let mut i = root as usize;
                    for _ in 0..depth {
                        i = self.step::<OP>(i, row(r));
                    }
                    self.add_leaf(i, &mut m[r * g..(r + 1) * g]);
                }
            }
        } else {
            // few rows: LANES trees walk the same row in lockstep
            let trees = f.roots.len();
            for r in 0..rows {
                let xr = row(r);
                let out = &mut m[r * g..(r + 1) * g];
                let mut t = 0;
                // lanes indexed in lockstep, the form the compiler interleaves
                #[allow(clippy::needless_range_loop)]
                while t + LANES <= trees {
                    let mut idx = [0usize; LANES];
                    let mut depth = 0;
                    for l in 0..LANES {
                        idx[l] = f.roots[t + l] as usize;
                        depth = depth.max(self.depth[t + l]);
                    }
                    for _ in 0..depth {
                        for l in 0..LANES {
                            idx[l] = self.step::<OP>(idx[l], xr);
                        }
                    }
                    // leaves are added in tree order, as the source engines sum them
                    for l in 0..LANES {
                        self.add_leaf(idx[l], out);
                    }
                    t += LANES;
                }
                for t in t..trees {
                    let mut i = f.roots[t] as usize;
                    for _ in 0..self.depth[t] {
                        i = self.step::<OP>(i, xr);
                    }
                    self.add_leaf(i, out);
                }
            }
        }
        m
    }

    fn margins_mixed(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let f = &self.forest;
        let (g, nf) = (f.num_groups, f.num_features);
        let mut m = self.base_margins(x, rows);
        for (t, &root) in f.roots.iter().enumerate() {
            for r in 0..rows {
                let row = &x[r * nf..(r + 1) * nf];
                let mut i = root as usize;
                for _ in 0..self.depth[t] {
                    let n = self.nodes[i];
                    let v = row[n.feature as usize];
                    let cmp = match f.flags[i] & 0x07 {
                        OP_LT => v < n.threshold,
                        OP_LE => v <= n.threshold,
                        OP_GT => v > n.threshold,
                        OP_GE => v >= n.threshold,
                        OP_EQ => v == n.threshold,
                        _ => v != n.threshold,
                    };
                    let first = cmp | (v.is_nan() & (n.bits & 2 != 0));
                    i = (n.left + ((!first) as u32 & n.bits)) as usize;
                }
                let (start, count) = self.leaf[i];
                for k in start as usize..(start + count) as usize {
                    m[r * g + f.leaf_group[k] as usize] += f.leaf_value[k];
                }
            }
        }
        m
    }

    /// Runs the forest: returns (labels, values) where values are the
    /// probabilities (`rows × width`) of a classifier or the predictions of a
    /// regressor; labels are empty for regressors.
    pub fn predict(&self, x: &[f32], rows: usize) -> (Vec<i64>, Vec<f32>) {
        self.forest.finish(self.margins(x, rows), rows)
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One stump over feature 1 (`x1 < 0.5`, NaN to the first child): -1 or +2.
    fn stump() -> Forest {
        Forest {
            format: FORMAT.into(),
            version: VERSION,
            num_features: 2,
            num_groups: 1,
            base_margin: vec![0.5],
            post_transform: PostTransform::None,
            task: Task::Regressor,
            roots: vec![0],
            feature: vec![1, 1, 1],
            threshold: vec![0.5, 0.0, 0.0],
            left: vec![1, 0, 1],
            flags: vec![OP_LT | MISSING_FIRST, LEAF, LEAF],
            leaf_group: vec![0, 0],
            leaf_value: vec![-1.0, 2.0],
        }
    }

    #[test]
    fn a_stump_walks_and_missing_values_follow_the_default() {
        let c = Compiled::new(stump()).unwrap();
        let m = c.margins(&[0.0, 0.2, 0.0, 0.7, 0.0, f32::NAN], 3);
        assert_eq!(m, vec![-0.5, 2.5, -0.5]);
    }

    #[test]
    fn out_of_range_indices_are_refused() {
        let mut f = stump();
        f.left[0] = 7;
        assert!(Compiled::new(f).is_err());
        let mut f = stump();
        f.feature[0] = 2;
        assert!(Compiled::new(f).is_err());
    }
}
