#!/usr/bin/env node
// The one executable: `extbackend operator|agent|demo|cluster|version`.
// Sources are TypeScript run directly by Node 24's type stripping.
import '../src/cli/main.ts';
