"""The model zoo: each model's forward handles ONE instance; each comes with a manual baseline."""
from .tagger import BiLSTMTagger as BiLSTMTagger
from .tagger import ManualTagger as ManualTagger
from .treelstm import TreeLSTM as TreeLSTM
from .treelstm import manual_treelstm as manual_treelstm
