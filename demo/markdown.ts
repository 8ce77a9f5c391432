// Safe rendering of model text: only **bold**, `code` and line breaks, built from DOM
// nodes and textContent. Model output never reaches innerHTML.

/** Replaces el's children with the rendered text. */
export function renderMarkdown(el: HTMLElement, text: string): void {
  const out: Node[] = [];
  const lines = text.split("\n");
  lines.forEach((line, i) => {
    if (i > 0) out.push(document.createElement("br"));
    // `code` first (its content is literal), then **bold** in the remaining text.
    const parts = line.split(/(`[^`\n]+`)/);
    for (const p of parts) {
      if (p.length > 2 && p.startsWith("`") && p.endsWith("`")) {
        const c = document.createElement("code");
        c.textContent = p.slice(1, -1);
        out.push(c);
        continue;
      }
      const bolds = p.split(/(\*\*[^*\n]+\*\*)/);
      for (const b of bolds) {
        if (b.length > 4 && b.startsWith("**") && b.endsWith("**")) {
          const s = document.createElement("strong");
          s.textContent = b.slice(2, -2);
          out.push(s);
        } else if (b) {
          out.push(document.createTextNode(b));
        }
      }
    }
  });
  el.replaceChildren(...out);
}
