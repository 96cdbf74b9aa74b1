from pkeyd.cli import main

raise SystemExit(main())
