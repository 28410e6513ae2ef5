// The hello framework's scheduler in JavaScript, built with componentize-js
// against `stoa:scheduler` unmodified (see README.md).

import * as driver from 'stoa:scheduler/driver@0.1.0';
import { getEnvironment } from 'wasi:cli/environment@0.2.0';

const CPUS = 0.1, MEM = 32;
let total = null, artifact = '', pending = [], finished = new Set();

export function subscribed(frameworkId) {
  driver.log('info', `javascript scheduler subscribed as ${frameworkId}`);
  if (total === null) {
    const env = Object.fromEntries(getEnvironment());
    total = parseInt(env.HELLO_TASKS ?? '5', 10);
    artifact = env.STOA_ARTIFACT_TASK ?? '';
    pending = [...Array(total).keys()];
  }
  if (!artifact) { driver.log('error', 'STOA_ARTIFACT_TASK is not set'); driver.teardown(); }
}

export function offers(offers) {
  for (const offer of offers) {
    const have = Object.fromEntries(offer.resources.map(s => [s.name, s.value]));
    const room = Math.floor(Math.min((have.cpus ?? 0) / CPUS, (have.mem ?? 0) / MEM) + 1e-9);
    const tasks = [];
    while (pending.length && tasks.length < room) {
      const i = pending.shift();
      tasks.push({ id: `js-${i}`, name: `hello ${i}`,
        resources: [{ name: 'cpus', value: CPUS }, { name: 'mem', value: MEM }],
        program: { tag: 'wasm', val: { artifact, input: new TextEncoder().encode(`js-${i}`), args: [], env: [] } },
        timeoutMs: 30000n, fuel: undefined });
    }
    if (tasks.length) driver.accept(new BigUint64Array([offer.id]), tasks, undefined);
    else driver.decline(new BigUint64Array([offer.id]), 1000n);
  }
}

export function update(status) {
  if (status.updateId !== undefined && status.agentId !== undefined)
    driver.acknowledge(status.agentId, status.taskId, status.updateId);
  if (status.state === 'finished') {
    finished.add(status.taskId);
    if (finished.size === total) { driver.log('info', `javascript: all ${total} tasks finished`); driver.teardown(); }
  } else if (['failed', 'error', 'lost', 'dropped'].includes(status.state)) {
    driver.log('error', `${status.taskId} ended ${status.state}: ${status.message}`);
    driver.teardown();
  }
}

export function rescind(offerId) {}
export function failure(agentId) {}
export function timer(id) {}
export function error(message) { driver.log('warn', `the master refused a call: ${message}`); }
export function message(source, data) {}
