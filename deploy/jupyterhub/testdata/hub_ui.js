// The JupyterHub end-to-end test's browser: a user logs in at the hub,
// opens the nbsecrets service (the hub's OAuth takes the browser through
// /hub/api/oauth2/authorize and back), and creates a project secret with
// the New Secret form. The value comes from a file, so that it is in no
// argument or log line.
'use strict';
const fs = require('fs');
const bt = require('browsertest');

bt.main(async ({ page, args, screenshot, log }) => {
  await page.goto(args.hub + '/hub/login');
  await page.fill('#username_input', args.user);
  await page.fill('#password_input', 'any');
  await Promise.all([page.waitForNavigation(), page.click('#login_submit')]);
  log('logged in at the hub, now at', new URL(page.url()).pathname);

  const redirects = [];
  page.on('request', (r) => {
    if (r.isNavigationRequest()) redirects.push(new URL(r.url()).pathname);
  });
  await page.goto(args.hub + '/services/nbsecrets/');
  await page.waitForSelector('#new-secret', { timeout: 30000 });
  const landed = new URL(page.url()).pathname;
  bt.event('service-open', { landed, redirects });

  await page.click('#new-secret');
  await page.waitForSelector('#name');
  await page.fill('#name', args.name);
  await page.fill('#value', fs.readFileSync(args.valueFile, 'utf8'));
  await page.check('#scope-project');
  await page.selectOption('#project', args.project);
  await Promise.all([page.waitForNavigation(), page.click('#create')]);
  await page.goto(args.hub + '/services/nbsecrets/');
  await page.waitForSelector(`tr[data-name="${args.name}"]`, { timeout: 15000 });
  const row = await page.textContent(`tr[data-name="${args.name}"]`);
  await screenshot('hub-secrets');
  const cookies = (await page.context().cookies())
    .filter((c) => c.name.startsWith('nbsecrets'))
    .map((c) => ({ name: c.name, path: c.path, httpOnly: c.httpOnly }));
  const html = await page.content();
  return { landed, redirects, row, cookies, pageHasValue: html.includes(fs.readFileSync(args.valueFile, 'utf8')) };
});
