// The harness's own test: load the Go test's page, tell the test, wait
// for its word, click the button and return what the page then shows.
'use strict';
const bt = require('browsertest');

bt.main(async ({ page, args, screenshot }) => {
  await page.goto(args.url);
  bt.event('loaded', { title: await page.title() });
  const msg = await bt.receive();
  await page.fill('#name', msg.name);
  await page.click('#go');
  const text = await bt.poll(async () => {
    const t = await page.textContent('#out');
    return t && t !== 'waiting' ? t : null;
  }, 10000, '#out to change');
  const shot = await screenshot('smoke');
  return { text, shot, ua: await page.evaluate(() => navigator.userAgent) };
});
