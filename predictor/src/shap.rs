//! Exact SHAP values of the boosted trees (path-dependent TreeSHAP), fast enough to explain
//! every scored window.
//!
//! forust computes the same values, but allocates on every tree node it visits and recomputes
//! each tree's expected value per call; over 150 trees that alone exceeded the 1 ms scoring
//! budget. This module flattens the ensemble once (the model caches it) and walks each tree
//! with a preallocated path stack, so an explanation costs a fraction of a millisecond.
//!
//! What is computed: for each feature `i`, the Shapley value of the game
//! `v(S) = E[f(x) | x_S]`, where the expectation over the features outside `S` follows the
//! training cover (hessian sums) of each branch — the "path-dependent" TreeSHAP definition of
//! Lundberg et al. (2018), which is also what forust's `ContributionsMethod::Shapley` returns.
//! Values are in log-odds units and, with the expected value, sum to the raw margin.

use forust_ml::gradientbooster::GradientBooster;

/// One node of a flattened tree. Leaves have `feature == LEAF`.
#[derive(Debug, Clone, Copy)]
struct Node {
    feature: u32,
    split: f64,
    left: u32,
    right: u32,
    /// Where a missing value goes; equal to `left` or `right` when there is no separate
    /// missing branch.
    missing: u32,
    /// Training cover (hessian sum): how often the tree's data took this branch.
    cover: f64,
    /// Leaf value (log-odds contribution).
    value: f64,
}

const LEAF: u32 = u32::MAX;

/// One element of the TreeSHAP path: a feature split on the way to the current node, the
/// fraction of "feature absent" paths (cover share) and of "feature present" paths flowing
/// through it, and the permutation weight of subsets of that size.
///
/// `one` is always exactly 0 or 1 here (it starts at 1 and is only ever copied or replaced by
/// 0), which is why the path updates below never divide by it; `inv_zero` caches `1 / zero`
/// because the leaf loop would otherwise divide by it for every leaf.
#[derive(Debug, Clone, Copy, Default)]
struct PathElem {
    feature: u32,
    zero: f64,
    inv_zero: f64,
    one: f64,
    weight: f64,
}

/// The ensemble in a layout made for explanation (see the module docs).
#[derive(Debug, Clone)]
pub struct TreeExplainer {
    trees: Vec<Vec<Node>>,
    /// `missing` value of the booster (NaN: NaN is missing).
    missing: f64,
    /// Deepest tree, for sizing the path stack.
    max_depth: usize,
    /// Sum over trees of the cover-weighted mean leaf value, plus the base score: the model's
    /// expected margin, which the SHAP values plus this sum to.
    expected: f64,
}

impl TreeExplainer {
    /// Flattens the trees the booster predicts with.
    pub fn new(booster: &GradientBooster) -> TreeExplainer {
        let used = booster
            .prediction_iteration
            .unwrap_or(booster.trees.len())
            .min(booster.trees.len());
        let trees: Vec<Vec<Node>> = booster.trees[..used]
            .iter()
            .map(|t| {
                t.nodes
                    .iter()
                    .map(|n| Node {
                        feature: if n.is_leaf {
                            LEAF
                        } else {
                            n.split_feature as u32
                        },
                        split: n.split_value,
                        left: n.left_child as u32,
                        right: n.right_child as u32,
                        missing: n.missing_node as u32,
                        cover: n.hessian_sum as f64,
                        value: n.weight_value as f64,
                    })
                    .collect()
            })
            .collect();
        // The reciprocal table bounds the path length; forust trees are far shallower, and a
        // deeper or dangling one would be a corrupt file, so such trees are left out of
        // explanations rather than crash the node.
        let trees: Vec<Vec<Node>> = trees
            .into_iter()
            .filter(|t| depth(t, 0) + 2 < INV.len())
            .collect();
        let max_depth = trees.iter().map(|t| depth(t, 0)).max().unwrap_or(0);
        let expected = booster.base_score + trees.iter().map(|t| mean_value(t, 0)).sum::<f64>();
        TreeExplainer {
            trees,
            missing: booster.missing,
            max_depth,
            expected,
        }
    }

    /// The model's expected margin (the SHAP "base value").
    pub fn expected_value(&self) -> f64 {
        self.expected
    }

    /// SHAP values of `row` (one per feature, log-odds units), written into `out`, which must
    /// be `row.len()` long. Features that are never split on get 0.
    pub fn shap_into(&self, row: &[f64], out: &mut [f64]) {
        out.iter_mut().for_each(|v| *v = 0.0);
        // Recursion level L owns path[L * stride .. (L + 1) * stride]; a child copies its
        // parent's path into its own slab, so siblings never see each other's changes.
        let stride = self.max_depth + 2;
        let mut path = vec![PathElem::default(); stride * (self.max_depth + 2)];
        for tree in &self.trees {
            if tree.is_empty() {
                continue;
            }
            let mut walk = Walk {
                tree,
                row,
                missing: self.missing,
                out,
                path: &mut path,
                stride,
            };
            walk.recurse(0, 0, 0, 1.0, 1.0, LEAF);
        }
    }

    /// SHAP values of `row`, one per feature.
    pub fn shap(&self, row: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; row.len()];
        self.shap_into(row, &mut out);
        out
    }
}

/// Depth below node `i`, or `BAD` when a child index is out of range or the tree is deeper
/// than [`INV`] supports (a cycle in a corrupt file counts as infinitely deep).
fn depth(tree: &[Node], i: usize) -> usize {
    fn walk(tree: &[Node], i: usize, budget: usize) -> usize {
        let Some(n) = tree.get(i) else { return BAD };
        if n.feature == LEAF {
            return 0;
        }
        if budget == 0 {
            return BAD;
        }
        children(n)
            .map(|c| walk(tree, c as usize, budget - 1))
            .max()
            .unwrap_or(0)
            .saturating_add(1)
    }
    walk(tree, i, INV.len())
}

const BAD: usize = usize::MAX / 2;

/// Cover-weighted mean leaf value below node `i`.
fn mean_value(tree: &[Node], i: usize) -> f64 {
    let Some(n) = tree.get(i) else { return 0.0 };
    if n.feature == LEAF {
        return n.value;
    }
    let mut sum = 0.0;
    for c in children(n) {
        let child = tree[c as usize];
        sum += child.cover * mean_value(tree, c as usize);
    }
    if n.cover > 0.0 {
        sum / n.cover
    } else {
        0.0
    }
}

/// The children of a split: left, right and, if separate, the missing branch.
fn children(n: &Node) -> impl Iterator<Item = u32> {
    let separate = n.missing != n.left && n.missing != n.right;
    [n.left, n.right]
        .into_iter()
        .chain(separate.then_some(n.missing))
}

struct Walk<'a> {
    tree: &'a [Node],
    row: &'a [f64],
    missing: f64,
    out: &'a mut [f64],
    path: &'a mut [PathElem],
    stride: usize,
}

impl Walk<'_> {
    fn is_missing(&self, v: f64) -> bool {
        if self.missing.is_nan() {
            v.is_nan()
        } else {
            v == self.missing
        }
    }

    /// Visits node `i` at recursion `level` with a path of `depth` elements before it is
    /// extended by the split that led here (`feature`, with fractions `zero` and `one`).
    #[allow(clippy::too_many_arguments)]
    fn recurse(&mut self, i: usize, level: usize, depth: usize, zero: f64, one: f64, feature: u32) {
        let node = self.tree[i];
        let base = level * self.stride;
        extend(
            &mut self.path[base..base + depth + 1],
            depth,
            zero,
            one,
            feature,
        );
        if node.feature == LEAF {
            let p = &self.path[base..base + depth + 1];
            for k in 1..=depth {
                let w = unwound_sum(p, depth, k);
                let e = p[k];
                self.out[e.feature as usize] += w * (e.one - e.zero) * node.value;
            }
            return;
        }
        let x = self
            .row
            .get(node.feature as usize)
            .copied()
            .unwrap_or(f64::NAN);
        let hot = if self.is_missing(x) {
            node.missing
        } else if x < node.split {
            node.left
        } else {
            node.right
        };
        // A feature split on twice along the path counts once: undo its earlier element and
        // carry its fractions into this split.
        let mut depth = depth;
        let (mut in_zero, mut in_one) = (1.0, 1.0);
        if let Some(k) = (1..=depth).find(|&k| self.path[base + k].feature == node.feature) {
            in_zero = self.path[base + k].zero;
            in_one = self.path[base + k].one;
            unwind(&mut self.path[base..base + depth + 1], depth, k);
            depth -= 1;
        }
        let next = base + self.stride;
        for c in children(&node) {
            let child = self.tree[c as usize];
            let share = if node.cover > 0.0 {
                child.cover / node.cover
            } else {
                0.0
            };
            self.path.copy_within(base..base + depth + 1, next);
            let one = if c == hot { in_one } else { 0.0 };
            self.recurse(
                c as usize,
                level + 1,
                depth + 1,
                in_zero * share,
                one,
                node.feature,
            );
        }
    }
}

/// `INV[j] = 1 / j`: the path updates divide by small integers at every step, and
/// multiplying by a table entry is several times cheaper than dividing.
const INV: [f64; 66] = {
    let mut t = [0.0; 66];
    let mut j = 1;
    while j < 66 {
        t[j] = 1.0 / j as f64;
        j += 1;
    }
    t
};

/// Appends an element to a path of `depth` elements (`p` has `depth + 1` slots) and updates
/// the subset-size weights.
fn extend(p: &mut [PathElem], depth: usize, zero: f64, one: f64, feature: u32) {
    p[depth] = PathElem {
        feature,
        zero,
        inv_zero: if zero != 0.0 { 1.0 / zero } else { 0.0 },
        one,
        weight: if depth == 0 { 1.0 } else { 0.0 },
    };
    let inv_d1 = INV[depth + 1];
    for i in (0..depth).rev() {
        p[i + 1].weight += one * p[i].weight * (i + 1) as f64 * inv_d1;
        p[i].weight = zero * p[i].weight * (depth - i) as f64 * inv_d1;
    }
}

/// Removes element `k` from a path of `depth + 1` elements, undoing its weight update.
fn unwind(p: &mut [PathElem], depth: usize, k: usize) {
    let (zero, inv_zero, one) = (p[k].zero, p[k].inv_zero, p[k].one);
    let d1 = (depth + 1) as f64;
    let inv_d1 = INV[depth + 1];
    if one != 0.0 {
        let mut carry = p[depth].weight;
        for i in (0..depth).rev() {
            let prev = p[i].weight;
            p[i].weight = carry * d1 * INV[i + 1];
            carry = prev - p[i].weight * zero * (depth - i) as f64 * inv_d1;
        }
    } else {
        for i in (0..depth).rev() {
            p[i].weight *= d1 * INV[depth - i] * inv_zero;
        }
    }
    for i in k..depth {
        p[i].feature = p[i + 1].feature;
        p[i].zero = p[i + 1].zero;
        p[i].inv_zero = p[i + 1].inv_zero;
        p[i].one = p[i + 1].one;
    }
}

/// Total weight of the path with element `k` removed, without modifying it.
fn unwound_sum(p: &[PathElem], depth: usize, k: usize) -> f64 {
    let (zero, inv_zero, one) = (p[k].zero, p[k].inv_zero, p[k].one);
    let d1 = (depth + 1) as f64;
    let mut total = 0.0;
    if one != 0.0 {
        let inv_d1 = INV[depth + 1];
        let mut carry = p[depth].weight;
        for i in (0..depth).rev() {
            let w = carry * d1 * INV[i + 1];
            total += w;
            carry = p[i].weight - w * zero * (depth - i) as f64 * inv_d1;
        }
    } else {
        for i in (0..depth).rev() {
            total += p[i].weight * d1 * INV[depth - i] * inv_zero;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gbt::{Gbt, GbtConfig};
    use forust_ml::gradientbooster::ContributionsMethod;
    use forust_ml::Matrix;
    use rand::{Rng, SeedableRng};

    fn fitted(n_features: usize, iterations: usize, max_depth: usize) -> (Gbt, Vec<f64>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let n = 3000;
        let mut rows = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let r: Vec<f64> = (0..n_features)
                .map(|j| {
                    // Some missing values so trees grow missing branches.
                    if j == 1 && rng.gen_bool(0.2) {
                        f64::NAN
                    } else {
                        rng.gen_range(0.0..1.0)
                    }
                })
                .collect();
            let logit =
                3.0 * r[0] - 2.0 * r[2].min(1.0) + if r[1].is_nan() { 1.0 } else { r[1] } - 1.5;
            y.push(if rng.gen_bool(1.0 / (1.0 + (-logit).exp())) {
                1.0
            } else {
                0.0
            });
            rows.extend(r);
        }
        let cfg = GbtConfig {
            iterations,
            max_depth,
            ..Default::default()
        };
        let gbt = Gbt::fit(&rows, n_features, &y, &vec![1.0; n], &[], &cfg).unwrap();
        (gbt, rows)
    }

    /// v(S) = E[f(x) | x_S] by the cover-weighted walk that defines path-dependent TreeSHAP.
    fn cond_expectation(t: &[Node], i: usize, row: &[f64], set: u32, missing: f64) -> f64 {
        let n = t[i];
        if n.feature == LEAF {
            return n.value;
        }
        if set & (1 << n.feature) != 0 {
            let x = row[n.feature as usize];
            let miss = if missing.is_nan() {
                x.is_nan()
            } else {
                x == missing
            };
            let c = if miss {
                n.missing
            } else if x < n.split {
                n.left
            } else {
                n.right
            };
            return cond_expectation(t, c as usize, row, set, missing);
        }
        children(&n)
            .map(|c| {
                t[c as usize].cover / n.cover * cond_expectation(t, c as usize, row, set, missing)
            })
            .sum()
    }

    fn brute_force(ex: &TreeExplainer, row: &[f64]) -> Vec<f64> {
        let m = row.len();
        let fact = |k: usize| (1..=k).product::<usize>() as f64;
        let v = |set: u32| -> f64 {
            ex.trees
                .iter()
                .map(|t| cond_expectation(t, 0, row, set, ex.missing))
                .sum()
        };
        let mut phi = vec![0.0; m];
        for (i, p) in phi.iter_mut().enumerate() {
            for set in 0u32..(1 << m) {
                if set & (1 << i) != 0 {
                    continue;
                }
                let s = set.count_ones() as usize;
                let w = fact(s) * fact(m - s - 1) / fact(m);
                *p += w * (v(set | (1 << i)) - v(set));
            }
        }
        phi
    }

    #[test]
    fn matches_the_shapley_definition_by_enumeration() {
        let (gbt, rows) = fitted(5, 12, 4);
        let ex = TreeExplainer::new(&gbt.booster);
        for r in rows.chunks(5).take(25) {
            let fast = ex.shap(r);
            let exact = brute_force(&ex, r);
            for (a, b) in fast.iter().zip(&exact) {
                assert!((a - b).abs() < 1e-9, "{fast:?} vs {exact:?}");
            }
            // Local accuracy: SHAP values plus the expected value give the margin.
            let margin = gbt.margin(r);
            let sum: f64 = fast.iter().sum::<f64>() + ex.expected_value();
            assert!((sum - margin).abs() < 1e-4, "{sum} vs {margin}");
        }
    }

    #[test]
    fn agrees_with_forust_on_a_deep_ensemble() {
        let (gbt, rows) = fitted(6, 80, 6);
        let ex = TreeExplainer::new(&gbt.booster);
        for r in rows.chunks(6).take(40) {
            let ours = ex.shap(r);
            let mut theirs = gbt.booster.predict_contributions(
                &Matrix::new(r, 1, 6),
                ContributionsMethod::Shapley,
                false,
            );
            theirs.truncate(6);
            for (a, b) in ours.iter().zip(&theirs) {
                // forust accumulates in f32.
                assert!(
                    (a - b).abs() < 1e-3 * (1.0 + b.abs()),
                    "{ours:?} vs {theirs:?}"
                );
            }
        }
    }
}
