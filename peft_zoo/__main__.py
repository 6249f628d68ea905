"""``python -m peft_zoo`` is the same as the ``peft-zoo`` command."""

import sys

from .cli import main

sys.exit(main())
