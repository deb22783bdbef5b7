#!/usr/bin/env node
// Registers the tsx loader so that Node can import the TypeScript sources directly.
import { register } from 'tsx/esm/api';

register();

// Imported after register(), because a static import would be resolved before the loader exists.
const { runCli } = await import('../src/cli/main.ts');

// Setting exitCode instead of calling process.exit lets output flush. For `serve`, runCli
// resolves only after the gateway has closed.
process.exitCode = await runCli(process.argv.slice(2));
