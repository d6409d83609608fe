"""Data layer: CoNLL-U parsing, vocabularies, trees, EWT loaders and synthetic workloads.

Nothing here imports torch; models turn these ids and trees into tensors.
"""

from .conllu import Sentence as Sentence
from .conllu import parse_conllu as parse_conllu
from .conllu import read_conllu as read_conllu
from .ewt import load_root_examples as load_root_examples
from .ewt import load_sentences as load_sentences
from .ewt import load_tagging as load_tagging
from .ewt import load_treebank as load_treebank
from .lattice import Lattice as Lattice
from .lattice import build_lattice as build_lattice
from .synthetic import Dag as Dag
from .synthetic import random_binary_tree as random_binary_tree
from .synthetic import random_dag as random_dag
from .synthetic import random_dags as random_dags
from .synthetic import random_lattice as random_lattice
from .synthetic import random_lattices as random_lattices
from .synthetic import random_nary_trees as random_nary_trees
from .synthetic import random_tree as random_tree
from .synthetic import random_chain as random_chain
from .synthetic import random_chains as random_chains
from .synthetic import random_trees as random_trees
from .synthetic import sentence_lengths as sentence_lengths
from .trees import NO_WORD as NO_WORD
from .trees import Tree as Tree
from .trees import binarize as binarize
from .trees import dependency_tree as dependency_tree
from .vocab import UPOS as UPOS
from .vocab import UPOS_TAGS as UPOS_TAGS
from .vocab import Vocab as Vocab
