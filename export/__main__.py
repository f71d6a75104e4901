"""python -m bert_squad_export"""

import sys

from .cli import main

sys.exit(main())
