"""`python -m layerq_nb.course build|grade|render ...`: the same as `layerq course ...`."""
import sys

from .cli import main

sys.exit(main())
