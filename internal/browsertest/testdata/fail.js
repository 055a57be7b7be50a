// A driver that fails after loading a page: the harness must report the
// error and leave failure.png.
'use strict';
const bt = require('browsertest');

bt.main(async ({ page, args }) => {
  await page.goto(args.url);
  throw new Error('deliberate failure ' + args.marker);
});
