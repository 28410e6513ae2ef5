// Drives the master's web UI in headless Chromium for tests/tests/ui.rs.
//
//   node check.mjs UI_URL SCREENSHOT.png
//
// Loads the page, waits until the overview shows the cluster and a chart
// holds samples, prints "loaded", then reads a task id from stdin (the
// test launches the task only now), waits until the task table shows it
// RUNNING, opens its page and waits for its log to show "tick 0", and
// saves a screenshot of the overview. Any failure exits non-zero with the
// reason on stderr.
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node check.mjs UI_URL SCREENSHOT.png');
  process.exit(2);
}

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(url);
  // The summary shows the cluster's one agent, connected.
  await page.waitForFunction(
    () => document.querySelector('[data-summary="agents"] b')?.textContent === '1/1',
    null, { timeout: 20000 });
  // A chart shows data: a few samples of cluster use.
  await page.waitForFunction(() => charts && charts.use.data[0].length >= 3, null, { timeout: 20000 });
  console.log('loaded');

  const { value: task } = await lines.next();
  if (!task) throw new Error('no task id on stdin');
  // Use is charted once the task holds its resources.
  await page.waitForFunction(() => charts.use.data[1].at(-1) > 0, null, { timeout: 20000 });
  await page.click('nav button[data-tab="tasks"]');
  const state = page.locator(`tr:has(a.task[data-task="${task}"]) [data-state]`);
  await page.waitForFunction(
    (id) => {
      // The table refreshes each second; look until the task shows RUNNING.
      const row = [...document.querySelectorAll('a.task')].find((a) => a.dataset.task === id);
      return row && row.closest('tr').querySelector('[data-state]').textContent === 'RUNNING';
    },
    task, { timeout: 30000 });
  console.log('task state', await state.textContent());
  await page.click(`a.task[data-task="${task}"]`);
  await page.waitForFunction(() => document.querySelector('#task-log').textContent.includes('tick 0'),
    null, { timeout: 20000 });
  console.log('log followed');
  await page.click('#task-close');
  await page.click('nav button[data-tab="overview"]');
  // A few more samples, so the charts show the task's share over time.
  await page.waitForTimeout(4000);
  await page.screenshot({ path: screenshot, fullPage: true });
  if (errors.length) throw new Error('errors in the page: ' + errors.join('; '));
  console.log('done');
} finally {
  await browser.close();
}
process.exit(0);
