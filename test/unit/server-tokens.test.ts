import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createTokenService, parseTtl } from '../../src/server/tokens.ts';
import { FakeClock } from '../fakes/clock.ts';

describe('token service', () => {
  it('verifies its own tokens for the same IP and pod until they expire', async () => {
    const clock = new FakeClock();
    const tokens = createTokenService({ clock });
    const t = tokens.mint('10.0.0.1', 'uid-1', 10);
    assert.equal(tokens.verify(t, '10.0.0.1', 'uid-1'), 'ok');
    await clock.advance(9_999);
    assert.equal(tokens.verify(t, '10.0.0.1', 'uid-1'), 'ok');
    await clock.advance(1);
    assert.equal(tokens.verify(t, '10.0.0.1', 'uid-1'), 'expired');
  });

  it('rejects another IP, another pod, a vanished pod, tampering and foreign keys', () => {
    const clock = new FakeClock();
    const tokens = createTokenService({ clock });
    const t = tokens.mint('10.0.0.1', 'uid-1', 600);
    assert.equal(tokens.verify(t, '10.0.0.2', 'uid-1'), 'invalid');
    assert.equal(tokens.verify(t, '10.0.0.1', 'uid-2'), 'invalid');
    assert.equal(tokens.verify(t, '10.0.0.1', undefined), 'invalid');
    const bytes = Buffer.from(t, 'base64url');
    bytes.writeUInt32BE(bytes.readUInt32BE(1) + 3600, 1); // stretch the expiry
    assert.equal(tokens.verify(bytes.toString('base64url'), '10.0.0.1', 'uid-1'), 'invalid');
    assert.equal(createTokenService({ clock }).verify(t, '10.0.0.1', 'uid-1'), 'invalid');
    for (const junk of ['', 'x', `${t}=`, `${t.slice(0, -1)}!`, t.replace(/^./, '*')]) assert.equal(tokens.verify(junk, '10.0.0.1', 'uid-1'), 'invalid');
  });

  it('binds a token minted for an unknown pod to the IP only', () => {
    const clock = new FakeClock();
    const tokens = createTokenService({ clock });
    const t = tokens.mint('10.0.0.1', undefined, 600);
    assert.equal(tokens.verify(t, '10.0.0.1', undefined), 'ok');
    assert.equal(tokens.verify(t, '10.0.0.1', 'uid-later'), 'ok');
    assert.equal(tokens.verify(t, '10.0.0.9', undefined), 'invalid');
  });

  it('shares tokens between services with the same key, and refuses short keys and bad TTLs', () => {
    const clock = new FakeClock();
    const key = Buffer.alloc(32, 7);
    const t = createTokenService({ clock, key }).mint('10.0.0.1', 'u', 60);
    assert.equal(createTokenService({ clock, key }).verify(t, '10.0.0.1', 'u'), 'ok');
    assert.throws(() => createTokenService({ clock, key: Buffer.alloc(4) }), /at least 16 bytes/);
    assert.throws(() => createTokenService({ clock }).mint('10.0.0.1', 'u', 0), RangeError);
    assert.throws(() => createTokenService({ clock }).mint('10.0.0.1', 'u', 21601), RangeError);
  });
});

describe('parseTtl', () => {
  it('accepts integers 1..21600 only', () => {
    assert.equal(parseTtl('1'), 1);
    assert.equal(parseTtl('21600'), 21600);
    assert.equal(parseTtl(' 300 '), 300);
    for (const bad of [undefined, '', '0', '21601', '-1', '1.5', '1e3', 'abc', '999999', ['60', '60']]) assert.equal(parseTtl(bad), undefined, String(bad));
  });
});
