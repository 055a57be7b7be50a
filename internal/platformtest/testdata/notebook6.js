// Jupyter Notebook 6 in chromium (TestNotebookIndicator): open the
// notebook, report its kernel, and at the test's word run the long cell
// while sampling the kernel indicator every 50 ms in the page; at the
// test's next word run the cell that prints the secret. Returns the
// samples taken while the long cell ran and what the second cell printed.
'use strict';
const bt = require('browsertest');

bt.main(async ({ page, args, screenshot, log }) => {
  await page.goto(args.url);
  await page.waitForFunction(() => window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel &&
    Jupyter.notebook.kernel.is_connected(), null, { timeout: 60000 });
  await page.waitForSelector('#kernel_indicator_icon.kernel_idle_icon', { timeout: 60000 });
  bt.event('kernel', { id: await page.evaluate(() => Jupyter.notebook.kernel.id) });

  await bt.receive(); // the agent serves the kernel: run the long cell
  await page.waitForSelector('#kernel_indicator_icon.kernel_idle_icon', { timeout: 60000 });
  await page.evaluate(() => {
    window.__samples = [];
    const out = () => Jupyter.notebook.get_cell(0).output_area.element.text();
    window.__sampler = setInterval(() => {
      const icon = document.getElementById('kernel_indicator_icon');
      window.__samples.push({ t: Date.now(), cls: icon.className, out: out() });
    }, 50);
    Jupyter.notebook.execute_cells([0]);
  });
  const started = await bt.poll(() => page.evaluate(() => {
    const s = window.__samples.find((x) => x.out.includes('cell-start'));
    return s ? s.t : 0;
  }), 30000, 'the long cell to start');
  bt.event('cell-started', { at: started });
  await screenshot('notebook6-busy');
  const ended = await bt.poll(() => page.evaluate(() => {
    const s = window.__samples.find((x) => x.out.includes('cell-end'));
    return s ? s.t : 0;
  }), 60000, 'the long cell to end');
  const samples = await page.evaluate(() => { clearInterval(window.__sampler); return window.__samples; });
  bt.event('cell-ended', { at: ended });

  await bt.receive(); // the agent holds the last value: print it
  await page.evaluate(() => Jupyter.notebook.execute_cells([1]));
  const printed = await bt.poll(() => page.evaluate(() => {
    const c = Jupyter.notebook.get_cell(1);
    return c.input_prompt_number !== '*' && c.input_prompt_number !== undefined && c.input_prompt_number !== null &&
      c.output_area.outputs.length > 0 ? c.output_area.element.text() : '';
  }), 30000, 'the print cell to finish');
  await screenshot('notebook6-after');
  log('samples', samples.length);
  return {
    started, ended, printed: printed.trim(),
    // The samples from the cell's first output to its last, each the icon's classes.
    during: samples.filter((s) => s.t >= started && s.t < ended).map((s) => ({ t: s.t, cls: s.cls })),
  };
});
