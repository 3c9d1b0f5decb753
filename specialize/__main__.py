from specialize.cli import main

raise SystemExit(main())
