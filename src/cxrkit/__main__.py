from cxrkit.cli import main

raise SystemExit(main())
