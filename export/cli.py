"""The bert-squad-export command (setup.cfg's entry point): the library's bert_squad.export.cli."""
from bert_squad.export.cli import main

__all__ = ["main"]
