//! The role tree: roles (hierarchical) with their frameworks as leaves.
//! Each node knows what its subtree holds and keeps its children ordered by
//! sorter key, so finding the next framework to serve walks one path
//! instead of sorting everyone.

use crate::quantities::Quantities;
use crate::sorter::Sorter;
use crate::{Allocation, Quota};
use std::collections::{BTreeSet, HashMap};
use stoa_proto::{FrameworkId, Role};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeKind {
    Root,
    Role(Role),
    Framework(FrameworkId),
}

/// Order among siblings: sorter key, then fewer allocations so far (equal
/// shares take turns, as in Mesos's sorter), then creation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    /// A non-negative f64 as bits: ordered like the float.
    order: u64,
    allocations: u64,
    idx: usize,
}

#[derive(Debug)]
struct Node {
    parent: Option<usize>,
    kind: NodeKind,
    allocated: Quantities,
    allocations: u64,
    weight: f64,
    quota: Option<Quota>,
    key: Key,
    children: BTreeSet<Key>,
}

#[derive(Debug)]
pub(crate) struct Tree {
    nodes: Vec<Option<Node>>,
    roles: HashMap<Role, usize>,
    /// Role nodes with a quota: few, and looked at on every pick.
    quota_roles: BTreeSet<usize>,
}

impl Tree {
    pub fn new() -> Tree {
        let root = Node {
            parent: None,
            kind: NodeKind::Root,
            allocated: Quantities::default(),
            allocations: 0,
            weight: 1.0,
            quota: None,
            key: Key {
                order: 0,
                allocations: 0,
                idx: 0,
            },
            children: BTreeSet::new(),
        };
        Tree {
            nodes: vec![Some(root)],
            roles: HashMap::new(),
            quota_roles: BTreeSet::new(),
        }
    }

    pub fn root(&self) -> usize {
        0
    }

    fn node(&self, i: usize) -> &Node {
        // Indices handed out by this tree stay valid until `remove`, which
        // only callers holding the index invoke.
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| unreachable!("node {i} was removed"))
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i]
            .as_mut()
            .unwrap_or_else(|| unreachable!("node {i} was removed"))
    }

    fn insert(&mut self, parent: usize, kind: NodeKind) -> usize {
        let idx = self.nodes.len();
        let key = Key {
            order: 0,
            allocations: 0,
            idx,
        };
        self.nodes.push(Some(Node {
            parent: Some(parent),
            kind,
            allocated: Quantities::default(),
            allocations: 0,
            weight: 1.0,
            quota: None,
            key,
            children: BTreeSet::new(),
        }));
        self.node_mut(parent).children.insert(key);
        idx
    }

    /// The node of `role`, created with its ancestors if missing.
    pub fn role(&mut self, role: &Role) -> usize {
        if let Some(&n) = self.roles.get(role) {
            return n;
        }
        let parent = match role.parent() {
            Some(p) => self.role(&p),
            None => self.root(),
        };
        let n = self.insert(parent, NodeKind::Role(role.clone()));
        self.roles.insert(role.clone(), n);
        n
    }

    pub fn find_role(&self, role: &Role) -> Option<usize> {
        self.roles.get(role).copied()
    }

    pub fn add_framework(&mut self, id: &FrameworkId, role: &Role) -> usize {
        let parent = self.role(role);
        self.insert(parent, NodeKind::Framework(id.clone()))
    }

    /// Removes a framework leaf; whatever it still held leaves its roles'
    /// totals too.
    pub fn remove(&mut self, node: usize) {
        let Some(n) = self.nodes[node].take() else {
            return;
        };
        let mut up = n.parent;
        if let Some(p) = up {
            self.node_mut(p).children.remove(&n.key);
        }
        while let Some(p) = up {
            let parent = self.node_mut(p);
            for (k, v) in n.allocated.iter() {
                parent.allocated.sub(&crate::single(k, v));
            }
            up = parent.parent;
        }
    }

    pub fn kind(&self, node: usize) -> &NodeKind {
        &self.node(node).kind
    }

    pub fn allocated(&self, node: usize) -> &Quantities {
        &self.node(node).allocated
    }

    pub fn quota(&self, node: usize) -> Option<&Quota> {
        self.node(node).quota.as_ref()
    }

    pub fn set_weight(&mut self, node: usize, weight: f64) {
        self.node_mut(node).weight = weight;
    }

    pub fn set_quota(&mut self, node: usize, quota: Option<Quota>) {
        if quota.is_some() {
            self.quota_roles.insert(node);
        } else {
            self.quota_roles.remove(&node);
        }
        self.node_mut(node).quota = quota;
    }

    /// The role nodes above a framework, nearest first.
    pub fn role_path(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(self.node(node).parent, |&p| self.node(p).parent).filter(|&p| p != 0)
    }

    /// True when some role has a non-empty guarantee.
    pub fn has_guarantees(&self) -> bool {
        self.quota_roles.iter().any(|&n| {
            self.node(n)
                .quota
                .as_ref()
                .is_some_and(|q| !q.guarantee.is_empty())
        })
    }

    /// The node's sorter key, as ordered bits.
    pub fn key_order(&self, node: usize) -> u64 {
        self.node(node).key.order
    }

    /// Roles with a quota, lowest key first.
    pub fn quota_roles_by_key(&self) -> Vec<usize> {
        let mut roles: Vec<(Key, usize)> = self
            .quota_roles
            .iter()
            .map(|&n| (self.node(n).key, n))
            .collect();
        roles.sort();
        roles.into_iter().map(|(_, n)| n).collect()
    }

    /// Walks the subtree of `node` depth-first, children lowest key first,
    /// and returns the first `Some` that `f` gives for a framework leaf.
    pub fn first_framework<T>(
        &self,
        node: usize,
        f: &mut impl FnMut(usize) -> Option<T>,
    ) -> Option<T> {
        for key in &self.node(node).children {
            let child = key.idx;
            let found = match self.node(child).kind {
                NodeKind::Framework(_) => f(child),
                _ => self.first_framework(child, f),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// `alloc` is now held by framework `node`: add it up the tree.
    pub fn hold(
        &mut self,
        node: usize,
        alloc: &Allocation,
        sorter: &mut dyn Sorter,
        total: &Quantities,
    ) {
        self.update_path(node, sorter, total, |n| {
            n.allocated.add(&alloc.unreserved);
            alloc.reserved.values().for_each(|r| n.allocated.add(r));
            n.allocations += 1;
        });
    }

    /// `alloc` is no longer held by framework `node`.
    pub fn release(
        &mut self,
        node: usize,
        alloc: &Allocation,
        sorter: &mut dyn Sorter,
        total: &Quantities,
    ) {
        self.update_path(node, sorter, total, |n| {
            n.allocated.sub(&alloc.unreserved);
            alloc.reserved.values().for_each(|r| n.allocated.sub(r));
        });
    }

    fn update_path(
        &mut self,
        node: usize,
        sorter: &mut dyn Sorter,
        total: &Quantities,
        change: impl Fn(&mut Node),
    ) {
        let mut at = Some(node);
        while let Some(i) = at {
            if i == 0 {
                break;
            }
            change(self.node_mut(i));
            self.rekey(i, sorter, total);
            at = self.node(i).parent;
        }
    }

    fn rekey(&mut self, i: usize, sorter: &mut dyn Sorter, total: &Quantities) {
        let (old, parent, order) = {
            let n = self.node(i);
            let order = sorter.key(&n.allocated, total, n.weight).max(0.0);
            (n.key, n.parent, order)
        };
        let new = Key {
            order: order.to_bits(),
            allocations: self.node(i).allocations,
            idx: i,
        };
        if new == old {
            return;
        }
        self.node_mut(i).key = new;
        if let Some(p) = parent {
            let siblings = &mut self.node_mut(p).children;
            siblings.remove(&old);
            siblings.insert(new);
        }
    }

    /// Recomputes every key (shares change when the cluster's total does;
    /// a random sorter draws anew each run).
    pub fn rekey_all(&mut self, sorter: &mut dyn Sorter, total: &Quantities) {
        for i in 1..self.nodes.len() {
            if self.nodes[i].is_some() {
                self.rekey(i, sorter, total);
            }
        }
    }
}
