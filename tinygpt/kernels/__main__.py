"""`python -m tinygpt.kernels`: build the kernels now and say which instructions they use."""
from tinygpt.kernels import main

raise SystemExit(main())
