"""Trees for tree-structured models, and their construction from dependency parses.

Two shapes are built from a ``Sentence``:

* ``dependency_tree``: the dependency tree as annotated, for child-sum TreeLSTMs. Every
  token is one node that carries its own word id *and* has its dependents as children.
* ``binarize``: a strictly binary tree whose leaves are the tokens, for binary
  TreeLSTM / TreeGRU / MV-RNN; internal nodes carry no word (``word == -1``).

All traversals are iterative, so arbitrarily deep trees never hit Python's recursion
limit.
"""

from __future__ import annotations

from typing import Iterator

from .conllu import Sentence, tree_error
from .vocab import Vocab

NO_WORD = -1  # word id of internal nodes that do not stand for a token


class Tree:
    """A node of an ordered tree; the root node stands for the whole tree.

    ``word``: word id of the token this node stands for, or ``NO_WORD`` (-1).
    ``children``: child subtrees, left to right; empty for a leaf.
    ``label``: an integer target or tag for the node (e.g. a dependency relation id).

    Construction is a plain slot assignment with no validation, because millions of
    nodes are built in benchmarks; the builders in this module guarantee well-formed
    trees. Nodes compare by identity (they are usable as dict keys); compare shapes
    with ``signature()``.
    """

    __slots__ = ("word", "children", "label")

    def __init__(self, word: int = NO_WORD, children: tuple[Tree, ...] = (), label: int = 0) -> None:
        self.word = word
        self.children = children
        self.label = label

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def nodes_postorder(self) -> list[Tree]:
        """All nodes, children before their parent, siblings left to right."""
        order: list[Tree] = []
        # Reverse of a (node, then children right-to-left) preorder is a postorder.
        stack = [self]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(node.children)
        order.reverse()
        return order

    def leaves(self) -> Iterator[Tree]:
        """Leaf nodes, left to right."""
        stack = [self]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(reversed(node.children))
            else:
                yield node

    def size(self) -> int:
        """Number of nodes."""
        count = 0
        stack = [self]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children)
        return count

    def num_leaves(self) -> int:
        return sum(1 for _ in self.leaves())

    def height(self) -> int:
        """Edges on the longest root-to-leaf path; a single leaf has height 0."""
        height = -1
        level = [self]
        while level:
            height += 1
            level = [child for node in level for child in node.children]
        return height

    def signature(self) -> tuple[int, ...]:
        """Flat, hashable encoding of shape, words and labels.

        Postorder triples ``(word, label, number_of_children)``; two trees have equal
        signatures exactly when they are structurally equal.
        """
        return tuple(
            value
            for node in self.nodes_postorder()
            for value in (node.word, node.label, len(node.children))
        )

    def __repr__(self) -> str:
        # S-expression of word ids: leaf "7", internal "(a b)", token node with
        # dependents "7(a b)". Labels are omitted; long trees are truncated.
        limit = 160
        parts: list[str] = []
        length = 0
        stack: list[Tree | str] = [self]
        while stack and length <= limit:
            item = stack.pop()
            if isinstance(item, str):
                text = item
            elif item.children:
                text = ("" if item.word == NO_WORD else str(item.word)) + "("
                stack.append(")")
                for index in range(len(item.children) - 1, -1, -1):
                    stack.append(item.children[index])
                    if index:
                        stack.append(" ")
            else:
                text = str(item.word)
            parts.append(text)
            length += len(text)
        body = "".join(parts)
        if stack or length > limit:
            body = body[:limit] + "..."
        return f"Tree({body})"


def _children_of(sentence: Sentence) -> list[list[int]]:
    """Dependents of each token (0-based), in word order; index ``n`` is the root slot."""
    n = len(sentence)
    problem = tree_error(sentence.heads)
    if problem is not None:
        token_index, message = problem
        raise ValueError(f"sentence {sentence.sent_id!r}, token {token_index + 1}: {message}")
    children: list[list[int]] = [[] for _ in range(n + 1)]
    for index, head in enumerate(sentence.heads):
        children[head - 1 if head else n].append(index)
    return children


def _topdown_order(children: list[list[int]], root: int) -> list[int]:
    order = [root]
    for token in order:  # the list grows while we walk it: breadth-first order
        order.extend(children[token])
    return order


def _encoded(sentence: Sentence, vocab: Vocab, label_vocab: Vocab):
    """(dependents of each token, root token, word ids, relation ids) of one sentence."""
    children = _children_of(sentence)
    (root,) = children[len(sentence)]
    return children, root, vocab.encode(sentence.words), label_vocab.encode(sentence.deprels)


def dependency_tree(sentence: Sentence, vocab: Vocab, label_vocab: Vocab) -> Tree:
    """The sentence's dependency tree, one node per token.

    Each node has ``word = vocab[token]``, ``label = label_vocab[deprel]`` (the
    relation to its own head; ``root`` for the root), and as children the nodes of its
    dependents in word order. Unlike binary trees, *internal nodes also carry a word*
    (the head token), as child-sum TreeLSTMs expect. ``size() == len(sentence)``.
    """
    children, root, word_ids, label_ids = _encoded(sentence, vocab, label_vocab)
    nodes: list[Tree | None] = [None] * len(sentence)
    for token in reversed(_topdown_order(children, root)):  # dependents before heads
        nodes[token] = Tree(
            word_ids[token],
            tuple(nodes[dependent] for dependent in children[token]),  # type: ignore[misc]
            label_ids[token],
        )
    return nodes[root]  # type: ignore[return-value]


def binarize(sentence: Sentence, vocab: Vocab, label_vocab: Vocab) -> Tree:
    """Head-outward binarization of the dependency tree into a strictly binary tree.

    Scheme (deterministic): each head starts as a leaf for its own token. Its *right*
    dependents are attached first, nearest first, each as the right child of a new
    node; then its *left* dependents, nearest first, each as the left child of a new
    node. Every dependent is itself binarized the same way before being attached.
    This mirrors an X-bar-like constituency (complements, then specifiers), e.g.
    ``the big dog`` -> ``(the (big dog))`` and ``she saw it`` -> ``(she (saw it))``.

    Contract:

    * leaves are exactly the tokens, each once (``word = vocab[token]``,
      ``label = label_vocab[deprel]`` of that token);
    * every internal node has exactly 2 children, ``word == -1`` and
      ``label = label_vocab[deprel]`` of the dependent attached at that step;
      so there are ``len(sentence) - 1`` internal nodes;
    * a 1-token sentence is a single leaf;
    * for a projective tree the leaves are in word order. For a non-projective tree
      (EWT has some) the leaf order is the order the attachment produces: each
      head's span reads (left dependents' spans, far to near), head, (right
      dependents' spans, near to far) -- i.e. the tree is implicitly projectivized
      and some words appear out of sentence order.
    """
    children, root, word_ids, label_ids = _encoded(sentence, vocab, label_vocab)
    spans: list[Tree | None] = [None] * len(sentence)
    for head in reversed(_topdown_order(children, root)):  # dependents before heads
        span = Tree(word_ids[head], (), label_ids[head])
        dependents = children[head]
        split = _first_right(dependents, head)
        for dependent in dependents[split:]:  # right side, nearest first
            span = Tree(NO_WORD, (span, spans[dependent]), label_ids[dependent])  # type: ignore[arg-type]
        for dependent in reversed(dependents[:split]):  # left side, nearest first
            span = Tree(NO_WORD, (spans[dependent], span), label_ids[dependent])  # type: ignore[arg-type]
        spans[head] = span
    return spans[root]  # type: ignore[return-value]


def _first_right(dependents: list[int], head: int) -> int:
    """Index of the first dependent to the right of ``head`` (dependents are sorted)."""
    for index, dependent in enumerate(dependents):
        if dependent > head:
            return index
    return len(dependents)
