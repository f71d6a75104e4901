"""python -m bert_squad_export"""

import sys

from bert_squad.export.cli import main

sys.exit(main())
