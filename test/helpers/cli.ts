import { runCli } from '../../src/cli/main.ts';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

function captureWriter() {
  const chunks: string[] = [];
  return {
    write(text: string) {
      chunks.push(text);
      return true;
    },
    text: () => chunks.join(''),
  };
}

/** Runs the CLI in this process with the given environment and returns its exit code and output. */
export async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const stdout = captureWriter();
  const stderr = captureWriter();
  const code = await runCli(args, { stdout, stderr, env });
  return { code, stdout: stdout.text(), stderr: stderr.text() };
}
