"""PQ-trees: every order of a universe in which given subsets are consecutive.

A PQ-tree (Booth & Lueker 1976, "Testing for the consecutive ones property, interval graphs, and
graph planarity using PQ-tree algorithms", J. Comput. Syst. Sci. 13(3):335-379) represents a
family of orders of its leaves (the universe). A P-node's children may be permuted arbitrarily; a
Q-node's children keep their order or are reversed as a whole. The frontier (leaves read left to
right) of every tree obtained by such moves is one admitted order, and every admitted order arises
this way. The initial tree is one P-node over the universe: every order is admitted.

Contract
--------
- ``PQTree(elements)``: distinct hashable elements (ValueError on a duplicate); 0 and 1 work.
- ``reduce(subset) -> bool``: add the constraint "``subset`` is consecutive". True, and the tree
  now admits exactly the orders that satisfy every accepted constraint, when that family is not
  empty; otherwise False and the tree is unchanged (same ``str``, same ``frontier``). Subsets of
  size 0, 1 or the whole universe are always True. Unknown elements: ValueError naming them.
- ``frontier()``: one admitted order. ``admits(order)``: membership test, O(n).
- ``count_orders()``: how many orders are admitted (O(nodes)); ``orders()`` enumerates them
  (exponential, for tests and small trees).
- ``copy()``, ``check()`` (structural invariants), ``str``: P-nodes ``(a b c)``, Q-nodes ``[a b c]``.

Algorithm: Booth-Lueker BUBBLE + REDUCE with the templates
------------------------------------------------------------
For a reduction by S, the *pertinent root* is the deepest node whose subtree holds all of S and
the *pertinent subtree* is the part of its subtree that holds leaves of S. Nodes are labelled
bottom-up: *full* (every leaf below is in S), or *partial*. After its template, a non-root partial
node is always a Q-node with its full children at one end (*singly partial*); only the pertinent
root may become *doubly partial* (full children in the middle). The templates, matched at each
pertinent node once all its pertinent children are done:

- L1: a leaf of S is full.
- P1: a P-node whose children are all full is full.
- P2: pertinent root P-node, no partial child: its full children are grouped under a new P-node.
- P3: non-root P-node, no partial child: becomes the singly partial Q-node
  [empty children, full children] (each side a P-node when it has several members).
- P4: pertinent root P-node, one partial child: the full children are attached at the full end of
  that partial Q-node.
- P5: non-root P-node, one partial child: the partial Q-node replaces it, with the full children at
  its full end and the empty children at its empty end.
- P6: pertinent root P-node, two partial children: the two Q-nodes are joined full end to full end
  with the full children in between.
- Q1: a Q-node whose children are all full is full.
- Q2: non-root Q-node whose pertinent children form a run at one end, the run holding full
  children and at most one partial child at its inner end: the partial child's children are
  spliced in, full side toward the run; the result is singly partial.
- Q3: pertinent root Q-node whose pertinent children are consecutive, partial children only at the
  two ends of the run: partial children are spliced in, full sides toward the run.

Booth & Lueker prove the templates complete: if some pertinent node matches none, no admitted
order makes S consecutive, so the reduction fails.

Safe reduce: ``reduce`` runs in two phases. The *match* phase labels the pertinent subtree and
matches every template without touching the tree; it is exact because a template only replaces a
child in place (it never moves the parent's other children), so matching on the original tree
gives the same answer as matching during the rewrite. Only when every node matches does the
*apply* phase rewrite the tree; it cannot fail. No copy, no undo log.

Representation and cost (n leaves)
----------------------------------
Every node has a parent pointer. P-node children are an insertion-ordered dict, so removing the
full children costs O(#full) however many empty children stay. Q-node children are a list.

BUBBLE climbs from the leaves of S in lockstep rounds until a single front remains, then walks down
to the pertinent root; the lockstep bounds the nodes climbed above the pertinent root by the
pertinent subtree's depth. Per reduce, the Python-level work is O(|S| + |pertinent subtree|), the
template work of Booth & Lueker, whose amortised analysis bounds it over a sequence of successful
reductions by O(n + #reductions + sum |S|). On top of that come, per Q-node touched, a few
``list.index`` scans and list splices, which run in C in O(#children), and the parent-pointer
updates when a partial Q-node's children are spliced into another Q-node (Booth & Lueker keep no
parent pointers inside Q-nodes to avoid them): we always move the shorter child list into the
longer (small-to-large), and Q-nodes never lose children, so a node is re-parented this way
O(log n) times over its life. A *failed* reduce costs its match phase, O(|S| + |pertinent
subtree|), which is not amortised: failing again and again on a constraint whose pertinent subtree
is deep pays that depth each time. Measured on one core: 3000 reductions by random intervals of
length <= 8 of a hidden order of 10^4 elements take about 0.1 s in total.

Everything is iterative (no recursion limit) except ``orders()``. ``str`` writes elements with
``str()``, so it is unambiguous only when no element's text contains spaces or brackets.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from itertools import chain, permutations, product

__all__ = ["PQTree"]

_LEAF, _P, _Q = 0, 1, 2


class _Node:
    """A leaf (``element``), a P-node (``children``: dict child -> None) or a Q-node (list)."""

    __slots__ = ("kind", "parent", "children", "element")

    def __init__(self, kind: int, children=None, element=None):
        self.kind = kind
        self.parent: _Node | None = None
        self.children = children
        self.element = element


def _new_p(members: Iterable[_Node]) -> _Node:
    node = _Node(_P, dict.fromkeys(members))
    for child in node.children:
        child.parent = node
    return node


def _preorder(root: _Node) -> list[_Node]:
    """Every node below ``root``, each before its descendants; children in left-to-right order."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        out.append(node)
        if node.kind != _LEAF:
            stack.extend(reversed(node.children))
    return out


def _match_template(node: _Node, kids: list[_Node], full: set, is_root: bool):
    """The template that applies at ``node``, as ``(name, data)``, or None when none does.

    ``kids``: the pertinent children of ``node``; ``full``: the nodes already labelled full. Read
    only. Data: ``(full_kids, partial_kids)`` for P templates, ``(lo, hi, partial_at)`` for Q
    templates, where ``children[lo..hi]`` is the pertinent run and ``partial_at`` the positions of
    its partial children in decreasing order (so splicing one keeps the others' positions valid).
    """
    if node.kind == _P:
        full_kids = [k for k in kids if k in full]
        partial_kids = [k for k in kids if k not in full]
        n_empty = len(node.children) - len(kids)
        if not partial_kids and n_empty == 0:
            return "P1", None
        if is_root:
            if len(partial_kids) > 2:
                return None
            return ("P2", "P4", "P6")[len(partial_kids)], (full_kids, partial_kids)
        # Below the root a partial node must stay singly partial: at most one partial child.
        if len(partial_kids) > 1:
            return None
        return ("P3", "P5")[len(partial_kids)], (full_kids, partial_kids)

    children = node.children
    kid_set = set(kids)
    last = len(children) - 1
    lo = hi = children.index(kids[0])  # C-speed scan; then only the run is walked in Python
    while lo > 0 and children[lo - 1] in kid_set:
        lo -= 1
    while hi < last and children[hi + 1] in kid_set:
        hi += 1
    if hi - lo + 1 != len(kids):
        return None  # pertinent children are not consecutive
    n_partial = sum(1 for k in kids if k not in full)
    partial_at = [i for i in ((hi, lo) if lo < hi else (lo,)) if children[i] not in full]
    if len(partial_at) != n_partial:
        return None  # a partial child inside the run: its empty leaves would split the run
    if n_partial == 0 and lo == 0 and hi == last:
        return "Q1", None
    if is_root:
        return "Q3", (lo, hi, partial_at)
    if n_partial > 1:
        return None  # would be doubly partial below the root
    if n_partial == 0:
        if lo != 0 and hi != last:
            return None  # a full run in the middle cannot reach the parent's other full leaves
    else:
        i = partial_at[0]
        # The run sits at one end of the node and the partial child is its inner end.
        if not ((i == hi and lo == 0) or (i == lo and hi == last)):
            return None
    return "Q2", (lo, hi, partial_at)


class PQTree:
    """The orders of ``elements`` admitted by every accepted consecutiveness constraint.

    See the module docstring for the contract, the algorithm and its cost.
    """

    __slots__ = ("_elements", "_leaves", "_root")

    def __init__(self, elements: Iterable[Hashable]):
        elements = tuple(elements)
        leaves: dict = {}
        duplicates = []
        for element in elements:
            if element in leaves:
                duplicates.append(element)
            else:
                leaves[element] = _Node(_LEAF, element=element)
        if duplicates:
            raise ValueError(f"PQTree: duplicate elements {duplicates!r}")
        self._elements = elements
        self._leaves = leaves
        if not leaves:
            self._root: _Node | None = None
        elif len(leaves) == 1:
            self._root = next(iter(leaves.values()))
        else:
            self._root = _new_p(leaves.values())

    # ------------------------------------------------------------------ queries

    @property
    def elements(self) -> tuple:
        """The universe, in construction order."""
        return self._elements

    def __len__(self) -> int:
        return len(self._elements)

    def frontier(self) -> list:
        """The leaves left to right: one admitted order."""
        if self._root is None:
            return []
        return [node.element for node in _preorder(self._root) if node.kind == _LEAF]

    def admits(self, order: Iterable[Hashable]) -> bool:
        """Whether ``order`` (a sequence of elements) is one of the admitted orders. O(n)."""
        order = list(order)
        if len(order) != len(self._leaves):
            return False
        position = {}
        for i, element in enumerate(order):
            if element not in self._leaves or element in position:
                return False
            position[element] = i
        if self._root is None:
            return True
        span: dict[_Node, tuple[int, int]] = {}  # node -> (first, last) position of its leaves
        size: dict[_Node, int] = {}
        for node in reversed(_preorder(self._root)):  # children before parents
            if node.kind == _LEAF:
                p = position[node.element]
                span[node], size[node] = (p, p), 1
                continue
            spans = [span[c] for c in node.children]
            first = min(s[0] for s in spans)
            last = max(s[1] for s in spans)
            count = sum(size[c] for c in node.children)
            if last - first + 1 != count:
                return False  # the node's leaves are not consecutive
            if node.kind == _Q:
                starts = [s[0] for s in spans]
                ascending = all(a < b for a, b in zip(starts, starts[1:]))
                descending = all(a > b for a, b in zip(starts, starts[1:]))
                if not (ascending or descending):
                    return False
            span[node], size[node] = (first, last), count
        return True

    def count_orders(self) -> int:
        """How many orders are admitted: the product of k! per P-node and 2 per Q-node."""
        if self._root is None:
            return 1
        total = 1
        for node in _preorder(self._root):
            if node.kind == _P:
                total *= math.factorial(len(node.children))
            elif node.kind == _Q:
                total *= 2
        return total

    def orders(self) -> Iterator[tuple]:
        """Every admitted order, as tuples. Exponential in n and recursive: small trees only."""
        if self._root is None:
            yield ()
            return
        yield from _orders_below(self._root)

    def __str__(self) -> str:
        if self._root is None:
            return "()"
        parts: list[str] = []
        need_space = False
        stack: list = [self._root]
        while stack:
            item = stack.pop()
            if isinstance(item, str):  # a closing bracket
                parts.append(item)
                need_space = True
                continue
            if need_space:
                parts.append(" ")
            if item.kind == _LEAF:
                parts.append(str(item.element))
                need_space = True
                continue
            opening, closing = ("(", ")") if item.kind == _P else ("[", "]")
            parts.append(opening)
            need_space = False
            stack.append(closing)
            stack.extend(reversed(item.children))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"PQTree<{self}>"

    def copy(self) -> PQTree:
        """An independent tree admitting the same orders, with the same ``str``. O(n)."""
        clone = PQTree.__new__(PQTree)
        clone._elements = self._elements
        clone._leaves = {}
        clone._root = None
        if self._root is None:
            return clone
        # Children are visited left to right, so appending keeps every container's order.
        stack: list[tuple[_Node, _Node | None]] = [(self._root, None)]
        while stack:
            node, new_parent = stack.pop()
            if node.kind == _LEAF:
                twin = _Node(_LEAF, element=node.element)
                clone._leaves[node.element] = twin
            else:
                twin = _Node(node.kind, {} if node.kind == _P else [])
                stack.extend((child, twin) for child in reversed(node.children))
            twin.parent = new_parent
            if new_parent is None:
                clone._root = twin
            elif new_parent.kind == _P:
                new_parent.children[twin] = None
            else:
                new_parent.children.append(twin)
        return clone

    def check(self) -> None:
        """Raise AssertionError unless the structure is a proper PQ-tree over the universe:
        P-nodes have >= 2 children, Q-nodes >= 3, parent pointers agree with child containers,
        every node appears once, and the leaves are exactly the universe."""

        def fail(message: str) -> None:
            raise AssertionError(f"PQTree.check: {message} in {self}")

        root = self._root
        if root is None:
            if self._leaves:
                fail("no root but a non-empty universe")
            return
        if root.parent is not None:
            fail("the root has a parent")
        seen: set[int] = set()
        leaves = 0
        stack = [root]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                fail("a node is reachable twice")
            seen.add(id(node))
            if node.kind == _LEAF:
                if self._leaves.get(node.element) is not node:
                    fail(f"leaf {node.element!r} is not the universe's leaf")
                leaves += 1
                continue
            if node.kind == _P:
                if not isinstance(node.children, dict) or len(node.children) < 2:
                    fail("a P-node with fewer than 2 children")
            elif node.kind == _Q:
                if not isinstance(node.children, list) or len(node.children) < 3:
                    fail("a Q-node with fewer than 3 children")
            else:
                fail(f"unknown node kind {node.kind!r}")
            for child in node.children:
                if child.parent is not node:
                    fail("a child whose parent pointer is wrong")
                stack.append(child)
        if leaves != len(self._leaves) or len(self._leaves) != len(self._elements):
            fail("the leaves are not the universe")

    # ------------------------------------------------------------------ reduce

    def reduce(self, subset: Iterable[Hashable]) -> bool:
        """Require ``subset`` to be consecutive. True and the tree updated when satisfiable with the
        constraints accepted so far; False and the tree untouched otherwise."""
        members = self._leaf_nodes(subset)
        if len(members) <= 1 or len(members) == len(self._leaves):
            return True
        plan = self._match(members)
        if plan is None:
            return False
        self._apply(*plan)
        return True

    def _leaf_nodes(self, subset: Iterable[Hashable]) -> list[_Node]:
        leaves = self._leaves
        found: dict[_Node, None] = {}
        unknown = []
        for element in subset:
            leaf = leaves.get(element)
            if leaf is None:
                unknown.append(element)
            else:
                found[leaf] = None  # a repeated element counts once
        if unknown:
            raise ValueError(f"PQTree.reduce: elements not in the universe: {unknown!r}")
        return list(found)

    def _bubble(self, leaves: list[_Node]) -> tuple[_Node, dict[_Node, list[_Node]]]:
        """The pertinent root and, per node reached, its children that hold leaves of S.

        Fronts climb from the leaves in FIFO rounds; a front that reaches an already-reached node
        stops. When one front is left every leaf of S lies below it; the pertinent root is the first
        node below it (or it) with more than one reached child. The rounds keep the last front from
        climbing far above the pertinent root while others are still deep below it.
        """
        kids: dict[_Node, list[_Node]] = {leaf: [] for leaf in leaves}
        fronts = deque(leaves)
        while len(fronts) > 1:
            node = fronts.popleft()
            parent = node.parent
            if parent is None:  # the tree's root: wait there for the other fronts
                fronts.append(node)
                continue
            reached = kids.get(parent)
            if reached is None:
                kids[parent] = [node]
                fronts.append(parent)
            else:
                reached.append(node)
        node = fronts[0]
        while len(kids[node]) == 1:
            node = kids[node][0]
        return node, kids

    def _match(self, leaves: list[_Node]):
        """Match phase (read only): None when some node matches no template, else what ``_apply``
        needs: the templates in bottom-up order and the set of full nodes."""
        root, kids = self._bubble(leaves)
        full: set[_Node] = set(leaves)  # template L1
        plan = []
        for node in reversed(_preorder_of_pertinent(root, kids)):  # children before parents
            if node.kind == _LEAF:
                continue
            match = _match_template(node, kids[node], full, node is root)
            if match is None:
                return None
            name, data = match
            if name in ("P1", "Q1"):
                full.add(node)  # nothing to rewrite: a full node stays as it is
            else:
                plan.append((node, name, data))
        # A full pertinent root means S is already the leaf set of a subtree: plan is empty.
        return plan, full

    def _apply(self, plan: list, full: set) -> None:
        """Apply phase: rewrite the tree by the matched templates, bottom-up. Cannot fail."""
        replaced_by: dict[_Node, _Node] = {}  # pertinent node -> the node now in its place
        for node, name, data in plan:
            if name[0] == "P":
                full_kids, partial_kids = data
                partial_kids = [replaced_by.get(k, k) for k in partial_kids]
                if name == "P2":
                    self._p2(node, full_kids, full)
                elif name == "P3":
                    replaced_by[node] = self._p3(node, full_kids, full)
                elif name == "P4":
                    self._p4(node, full_kids, partial_kids[0], full)
                elif name == "P5":
                    replaced_by[node] = self._p5(node, full_kids, partial_kids[0], full)
                else:
                    self._p6(node, full_kids, partial_kids, full)
            else:  # Q2 or Q3: positions are unchanged since matching (children are replaced in place)
                lo, hi, partial_at = data
                current = node
                for i in partial_at:
                    # A partial child at the run's right end turns its full side left, at the left
                    # end right; a lone partial child (Q2) turns it toward the node's end it sits at.
                    full_first = (i == hi) if lo < hi else (lo == 0)
                    current = self._splice(current, i, full_first, full)
                replaced_by[node] = current

    # ------------------------------------------------------------------ templates (apply phase)

    def _p2(self, node: _Node, full_kids: list, full: set) -> None:
        # P2: the full children of the pertinent root become one P-node child (>= 2 of them).
        children = node.children
        for kid in full_kids:
            del children[kid]
        group = self._group(full_kids, full)
        children[group] = None
        group.parent = node

    def _p3(self, node: _Node, full_kids: list, full: set) -> _Node:
        # P3: a non-root P-node becomes the Q-node [empties, fulls]. It has two children for now;
        # the parent's template always adds to it or splices it, so no 2-child Q-node survives.
        children = node.children
        for kid in full_kids:
            del children[kid]
        full_part = self._group(full_kids, full)
        empty_part = self._residue(node)
        q = _Node(_Q, [empty_part, full_part])
        self._substitute(node, q)  # before re-parenting: empty_part may be node itself
        empty_part.parent = q
        full_part.parent = q
        return q

    def _p4(self, node: _Node, full_kids: list, partial: _Node, full: set) -> None:
        # P4: the full children of the pertinent root join its partial child at the full end.
        children = node.children
        for kid in full_kids:
            del children[kid]
        group = self._group(full_kids, full)
        seq = partial.children
        if seq[0] in full:
            seq.insert(0, group)
        else:
            seq.append(group)
        group.parent = partial
        if len(children) == 1:  # only the partial child is left: it takes the node's place
            self._substitute(node, partial)

    def _p5(self, node: _Node, full_kids: list, partial: _Node, full: set) -> _Node:
        # P5: the partial Q-node takes the non-root P-node's place, fulls at its full end and
        # empties at its empty end.
        children = node.children
        for kid in full_kids:
            del children[kid]
        del children[partial]
        full_part = self._group(full_kids, full) if full_kids else None
        empty_part = self._residue(node)
        full_left = partial.children[0] in full
        self._substitute(node, partial)
        seq = partial.children
        if full_part is not None:
            seq.insert(0 if full_left else len(seq), full_part)
            full_part.parent = partial
        if empty_part is not None:
            seq.insert(len(seq) if full_left else 0, empty_part)
            empty_part.parent = partial
        return partial

    def _p6(self, node: _Node, full_kids: list, partial_kids: list, full: set) -> None:
        # P6: the pertinent root's two partial Q-nodes are joined full end to full end, its full
        # children between them.
        first, second = partial_kids
        children = node.children
        for kid in full_kids:
            del children[kid]
        del children[first]
        del children[second]
        middle = [self._group(full_kids, full)] if full_kids else []
        a = first.children if first.children[-1] in full else first.children[::-1]  # empty..full
        b = second.children if second.children[0] in full else second.children[::-1]  # full..empty
        # Small-to-large: the longer Q-node survives, so fewer parent pointers move.
        if len(a) >= len(b):
            keeper, moved = first, middle + b
        else:
            keeper, moved = second, a + middle
        keeper.children = a + middle + b
        for child in moved:
            child.parent = keeper
        if children:
            children[keeper] = None
            keeper.parent = node
        else:
            self._substitute(node, keeper)

    def _splice(self, q: _Node, i: int, full_first: bool, full: set) -> _Node:
        """Q2/Q3 step: replace the partial Q-node at ``q.children[i]`` by its children, full side
        first when ``full_first``. Returns the Q-node now holding the merged sequence."""
        child = q.children[i]
        seq = child.children
        if (seq[0] in full) != full_first:
            seq = seq[::-1]
        siblings = q.children
        if len(seq) <= len(siblings):
            siblings[i : i + 1] = seq
            for grandchild in seq:
                grandchild.parent = q
            return q
        # Small-to-large: the child is longer, so it keeps its identity, adopts q's other children
        # and takes q's place.
        left, right = siblings[:i], siblings[i + 1 :]
        for sibling in chain(left, right):
            sibling.parent = child
        child.children = left + seq + right
        self._substitute(q, child)
        return child

    # ------------------------------------------------------------------ structural helpers

    @staticmethod
    def _group(members: list[_Node], full: set) -> _Node:
        """One node standing for ``members`` (full siblings): itself if single, else a new P-node,
        labelled full. The caller sets the result's parent."""
        if len(members) == 1:
            return members[0]
        group = _new_p(members)
        full.add(group)
        return group

    @staticmethod
    def _residue(node: _Node) -> _Node | None:
        """What stands for a P-node's remaining (empty) children: the node itself if it keeps two
        or more, the only child if one, None if none."""
        children = node.children
        if len(children) >= 2:
            return node
        if len(children) == 1:
            return next(iter(children))
        return None

    def _substitute(self, old: _Node, new: _Node) -> None:
        """Put ``new`` where ``old`` is in old's parent (or at the root). ``old.parent`` is kept."""
        parent = old.parent
        new.parent = parent
        if parent is None:
            self._root = new
        elif parent.kind == _P:
            del parent.children[old]
            parent.children[new] = None
        else:
            siblings = parent.children
            siblings[siblings.index(old)] = new


def _preorder_of_pertinent(root: _Node, kids: dict[_Node, list[_Node]]) -> list[_Node]:
    """The pertinent subtree below ``root`` (children given by ``kids``), parents first."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(kids[node])
    return out


def _orders_below(node: _Node) -> Iterator[tuple]:
    if node.kind == _LEAF:
        yield (node.element,)
        return
    child_orders = [list(_orders_below(child)) for child in node.children]
    k = len(child_orders)
    if node.kind == _P:
        arrangements: Iterable = permutations(range(k))
    else:
        arrangements = (range(k), range(k - 1, -1, -1))
    for arrangement in arrangements:
        for pieces in product(*(child_orders[j] for j in arrangement)):
            yield tuple(chain.from_iterable(pieces))
