// The web UI's browser test (TestWebUIInBrowser): a user logs in with the
// `nbsecrets ui` URL and manages secrets with the seeds' screens while the
// Go test checks a real kernel's os.environ after each step (the driver
// waits for its word) and the rollout view shows the kernel reaching each
// new version. Returns the HTML of every page it saw, for the leak check.
'use strict';
const bt = require('browsertest');

bt.main(async ({ browser, page, args, screenshot, log }) => {
  await page.setViewportSize({ width: 1000, height: 640 });
  const html = [];
  const grab = async () => html.push(await page.content());
  // step tells the Go test what happened and waits until it has checked
  // the kernel.
  const step = async (name, data) => {
    bt.event(name, data || null);
    const m = await bt.receive();
    if (!m.ok) throw new Error(`the test refused step ${name}: ${m.error}`);
  };
  const idOf = () => new URL(page.url()).pathname.split('/').filter(Boolean).pop();
  // rolloutCurrent waits until the secret's page shows the kernel holding
  // the version the page shows.
  const rolloutCurrent = async (what) => bt.poll(() => page.evaluate((k) => {
    const v = document.getElementById('version');
    const tr = document.querySelector(`#rollout tr[data-kernel="${k}"]`);
    if (!v || !tr || !tr.querySelector('td.current')) return null;
    return tr.dataset.version === v.textContent.trim() ? Number(tr.dataset.version) : null;
  }, args.kernel), 30000, `the rollout view to show the kernel at the new version of ${what}`);
  const nameCheck = async (want) => bt.poll(async () => {
    const t = await page.textContent('#name-check');
    return t && t.includes(want) ? t : null;
  }, 10000, `the live name check to say "${want}"`);

  // Log in; the URL then stops working.
  await page.goto(args.aliceLogin);
  await page.waitForSelector('#new-secret');
  const again = await (await browser.newContext()).newPage();
  const resp = await again.goto(args.aliceLogin);
  if (resp.status() !== 403) throw new Error(`a used login URL answered ${resp.status()}`);

  // New Secret, private, with the name checked as it is typed.
  await page.click('#new-secret');
  await page.fill('#name', '1_DB');
  await nameCheck('must start with a Latin letter');
  await screenshot('new-secret');
  await page.fill('#name', 'DB_PASSWORD');
  await nameCheck('is a valid name');
  await page.fill('#value', args.v1);
  await page.check('input[name=scope][value=private]');
  await page.click('#create');
  await page.waitForSelector('#rollout');
  const privId = idOf();
  const pv1 = await rolloutCurrent('DB_PASSWORD');
  await grab();
  await screenshot('secret-rollout');
  await step('private-created', { id: privId, version: pv1 });

  // New Secret in project ml.
  await page.goto(args.base + 'new');
  await page.fill('#name', 'API_TOKEN');
  await page.fill('#value', args.v2);
  await page.check('input[name=scope][value=project]');
  await page.selectOption('#project', 'ml');
  await page.click('#create');
  await page.waitForSelector('#rollout');
  const projId = idOf();
  await rolloutCurrent('API_TOKEN');
  await grab();
  await step('project-created', { id: projId });

  // Edit the private one: name and content, then Save.
  await page.goto(args.base + 'secrets/' + privId);
  await page.click('#edit');
  await page.fill('#name', 'DB_PASS');
  await screenshot('edit');
  await page.fill('#value', args.v3);
  const saveAt = Date.now();
  await page.click('#save');
  await page.waitForFunction(() => document.getElementById('secret-name').textContent === 'DB_PASS');
  const saveToPageMs = Date.now() - saveAt;
  const pv2 = await rolloutCurrent('DB_PASS');
  const saveToCurrentMs = Date.now() - saveAt; // Save, the page, the kernel re-seeded, the view updated
  if (pv2 <= pv1) throw new Error(`version after Save ${pv2}, before ${pv1}`);
  await grab();
  await step('edited', { version: pv2 });

  // Clone the project secret with a new name and content.
  await page.goto(args.base + 'secrets/' + projId);
  await page.click('#clone');
  await page.fill('#name', 'API_TOKEN_COPY');
  await page.fill('#value', args.v4);
  await page.click('#create');
  await page.waitForFunction(() => document.getElementById('secret-name').textContent === 'API_TOKEN_COPY');
  await rolloutCurrent('API_TOKEN_COPY');
  await grab();
  await step('cloned', { id: idOf() });

  // Access: alice, an admin of community research, switches sharing on.
  await page.goto(args.base + 'secrets/' + projId + '/access');
  await page.click('tr[data-community="research"] button');
  await page.waitForSelector('tr[data-community="research"] >> text=Turn off');
  const shared = await page.textContent('#shared-with');
  if (!shared.includes('research')) throw new Error(`after sharing: ${shared}`);
  await grab();
  await screenshot('access');
  await step('shared');

  // Bob, a member of ml but no admin of research, is refused.
  const bob = await (await browser.newContext()).newPage();
  await bob.setViewportSize({ width: 1000, height: 640 });
  await bob.goto(args.bobLogin);
  await bob.click('#new-secret');
  await bob.fill('#name', 'BOB_TOKEN');
  await bob.fill('#value', args.v5);
  await bob.check('input[name=scope][value=project]');
  await bob.selectOption('#project', 'ml');
  await bob.click('#create');
  await bob.waitForSelector('#rollout');
  await bob.click('#access-tab');
  await bob.fill('#community', 'research');
  await bob.click('#share-other button');
  const refusal = await bob.textContent('#error');
  if (!refusal.includes('only an admin of community')) throw new Error(`bob's share: ${refusal}`);
  html.push(await bob.content());
  await bob.screenshot({ path: require('path').join(process.env.NBSECRETS_BROWSERTEST_SCREENSHOTS, 'access-refused.png'), fullPage: true });
  await step('refused', { message: refusal });

  // The list, with the shadow note and who changed what.
  await page.goto(args.base);
  await page.waitForSelector('#secrets');
  await grab();
  await screenshot('list');

  // Delete says "Secret destroyed".
  await page.goto(args.base + 'secrets/' + privId);
  await page.click('#delete');
  await page.waitForSelector('#destroyed');
  const gone = await page.textContent('#destroyed');
  await grab();
  await screenshot('destroyed');
  await step('deleted', { text: gone });
  return { html, destroyed: gone, refusal, saveToPageMs, saveToCurrentMs };
});
