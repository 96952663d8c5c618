//! Tree ensembles as importers build them (`IrNode`: nodes with explicit
//! children), and their layout into the trees engine's `Forest`
//! (breadth-first, a split's children adjacent). Compile-time only: devices
//! load the laid-out forest and never see this IR.

use neoc_runtime::engine::trees::{Forest, PostTransform, Task, FORMAT, LEAF, MISSING_FIRST, VERSION};

/// A tree as importers see it, before layout: nodes with explicit children.
#[derive(Clone, Debug)]
pub enum IrNode {
    Split { feature: u32, threshold: f32, op: u8, missing_first: bool, first: usize, second: usize },
    Leaf { weights: Vec<(u32, f32)> },
}

/// Lays out trees (root at index 0 of each) into a forest: breadth-first, the
/// two children of a split adjacent. Checks child indices, cycles and features.
pub fn layout(
    trees: &[Vec<IrNode>],
    num_features: usize,
    num_groups: usize,
    base_margin: Vec<f32>,
    post_transform: PostTransform,
    task: Task,
) -> Result<Forest, String> {
    let mut f = Forest {
        format: FORMAT.into(),
        version: VERSION,
        num_features,
        num_groups,
        base_margin,
        post_transform,
        task,
        roots: vec![],
        feature: vec![],
        threshold: vec![],
        left: vec![],
        flags: vec![],
        leaf_group: vec![],
        leaf_value: vec![],
    };
    for (t, nodes) in trees.iter().enumerate() {
        if nodes.is_empty() {
            return Err(format!("tree {t} has no nodes"));
        }
        let base = f.feature.len();
        f.roots.push(base as u32);
        // queue of source node ids in output order; children pushed in pairs
        let mut order = vec![0usize];
        let mut seen = vec![false; nodes.len()];
        seen[0] = true;
        let mut k = 0;
        while k < order.len() {
            if let IrNode::Split { first, second, feature, .. } = &nodes[order[k]] {
                if *feature as usize >= num_features {
                    return Err(format!(
                        "tree {t}, node {}: feature {feature} is beyond the input width {num_features}",
                        order[k]
                    ));
                }
                for c in [*first, *second] {
                    if c >= nodes.len() {
                        return Err(format!(
                            "tree {t}, node {}: child {c} is out of range (the tree has {} nodes)",
                            order[k],
                            nodes.len()
                        ));
                    }
                    if seen[c] {
                        return Err(format!(
                            "tree {t}, node {}: child {c} is reached twice (a cycle or a shared node)",
                            order[k]
                        ));
                    }
                    seen[c] = true;
                    order.push(c);
                }
            }
            k += 1;
        }
        let mut pos = vec![0u32; nodes.len()];
        for (p, &src) in order.iter().enumerate() {
            pos[src] = (base + p) as u32;
        }
        for &src in &order {
            match &nodes[src] {
                IrNode::Split { feature, threshold, op, missing_first, first, .. } => {
                    f.feature.push(*feature);
                    f.threshold.push(*threshold);
                    f.left.push(pos[*first]);
                    f.flags.push(op | if *missing_first { MISSING_FIRST } else { 0 });
                }
                IrNode::Leaf { weights } => {
                    f.feature.push(weights.len() as u32);
                    f.threshold.push(0.0);
                    f.left.push(f.leaf_value.len() as u32);
                    f.flags.push(LEAF);
                    for (g, v) in weights {
                        f.leaf_group.push(*g);
                        f.leaf_value.push(*v);
                    }
                }
            }
        }
    }
    f.validate()?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use neoc_runtime::engine::trees::{Compiled, OP_LT};

    fn stump(t: f32, missing_first: bool) -> Vec<IrNode> {
        vec![
            IrNode::Split { feature: 1, threshold: t, op: OP_LT, missing_first, first: 1, second: 2 },
            IrNode::Leaf { weights: vec![(0, -1.0)] },
            IrNode::Leaf { weights: vec![(0, 2.0)] },
        ]
    }

    #[test]
    fn stumps_walk_and_missing_values_follow_the_default() {
        let f = layout(&[stump(0.5, true), stump(0.0, false)], 2, 1, vec![0.5], PostTransform::None, Task::Regressor)
            .unwrap();
        let f = Compiled::new(f).unwrap();
        let x = [0.0, 0.2, 0.0, 0.7, 0.0, f32::NAN, 0.0, -1.0];
        let m = f.margins(&x, 4);
        // 0.2: first tree left (-1), second right (+2); 0.7: +2 +2; NaN: left (-1), right (+2); -1: -1 -1
        assert_eq!(m, vec![1.5, 4.5, 1.5, -1.5]);
    }

    #[test]
    fn malformed_trees_are_refused() {
        let cyc = vec![
            IrNode::Split { feature: 0, threshold: 0.0, op: OP_LT, missing_first: false, first: 1, second: 0 },
            IrNode::Leaf { weights: vec![(0, 1.0)] },
        ];
        assert!(layout(&[cyc], 1, 1, vec![0.0], PostTransform::None, Task::Regressor)
            .unwrap_err()
            .contains("reached twice"));
        let oob = vec![
            IrNode::Split { feature: 0, threshold: 0.0, op: OP_LT, missing_first: false, first: 1, second: 7 },
            IrNode::Leaf { weights: vec![] },
        ];
        assert!(layout(&[oob], 1, 1, vec![0.0], PostTransform::None, Task::Regressor)
            .unwrap_err()
            .contains("out of range"));
        assert!(layout(&[stump(0.0, false)], 1, 1, vec![0.0], PostTransform::None, Task::Regressor)
            .unwrap_err()
            .contains("beyond the input width"));
    }

    #[test]
    fn hand_edited_forests_fail_validation() {
        let mut f = layout(&[stump(0.5, true)], 2, 1, vec![0.0], PostTransform::None, Task::Regressor).unwrap();
        f.left[0] = 0;
        assert!(f.validate().is_err());
        let mut f = layout(&[stump(0.5, true)], 2, 1, vec![0.0], PostTransform::None, Task::Regressor).unwrap();
        f.feature[0] = 9;
        assert!(f.validate().is_err());
        let mut f = layout(&[stump(0.5, true)], 2, 1, vec![0.0], PostTransform::None, Task::Regressor).unwrap();
        f.left[1] = 99;
        assert!(f.validate().is_err());
    }

    #[test]
    fn binary_classifier_outputs_probabilities_and_labels() {
        let f = layout(
            &[stump(0.5, true)],
            2,
            1,
            vec![0.0],
            PostTransform::BinarySigmoid,
            Task::Classifier { labels: vec![0, 1] },
        )
        .unwrap();
        let f = Compiled::new(f).unwrap();
        let (labels, p) = f.predict(&[0.0, 0.9, 0.0, 0.1], 2);
        assert_eq!(labels, vec![1, 0]);
        assert!((p[1] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-7);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-7);
    }
}
