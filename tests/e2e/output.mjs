// A child process's stdout and stderr, kept in memory (the newest 200–400 kB) for the log tails
// a failed test prints.

/** Captures `child`'s output: `log()` is what it wrote so far, `append(text)` adds a note of ours. */
export function captureOutput(child) {
  let text = '';
  const append = (data) => {
    text += data;
    if (text.length > 400_000) text = text.slice(-200_000);
  };
  child.stdout.on('data', append);
  child.stderr.on('data', append);
  return { log: () => text, append };
}
