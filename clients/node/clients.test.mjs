// Tessera driven by an unmodified npm FHIR client: fhir-kit-client.
//
// Run by crates/tessera/tests/clients.rs against a live server (SQLite and PostgreSQL):
//   TESSERA_BASE=http://127.0.0.1:PORT/fhir TESSERA_TOKEN=... node --test clients/node/
// Install the client with `npm ci --prefix clients/node`.
import test from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Client } from 'fhir-kit-client';

const baseUrl = process.env.TESSERA_BASE.replace(/\/$/, '');
const client = new Client({ baseUrl, bearerToken: process.env.TESSERA_TOKEN });
const run = randomUUID().slice(0, 10);
const family = (tag) => `Kit${tag}${run}`;

test('capability statement and SMART discovery', async () => {
  const cs = await client.capabilityStatement();
  assert.equal(cs.resourceType, 'CapabilityStatement');
  assert.equal(cs.fhirVersion, '4.0.1');
  const security = cs.rest[0].security;
  assert.ok(security, 'rest.security is declared');
  const smart = await client.smartAuthMetadata();
  assert.ok(smart.tokenUrl, 'the token endpoint is discovered');
});

test('create, read, vread, update, JSON patch, history, delete', async () => {
  const created = await client.create({ resourceType: 'Patient', body: { resourceType: 'Patient', name: [{ family: family('Crud') }] } });
  assert.ok(created.id);
  const read = await client.read({ resourceType: 'Patient', id: created.id });
  assert.equal(read.name[0].family, family('Crud'));
  const updated = await client.update({ resourceType: 'Patient', id: created.id, body: { ...read, gender: 'female' } });
  assert.equal(updated.meta.versionId, '2');
  const patched = await client.patch({ resourceType: 'Patient', id: created.id, jsonPatch: [{ op: 'add', path: '/birthDate', value: '1960-06-06' }] });
  assert.equal(patched.birthDate, '1960-06-06');
  const v1 = await client.vread({ resourceType: 'Patient', id: created.id, version: '1' });
  assert.equal(v1.gender, undefined);
  const history = await client.history({ resourceType: 'Patient', id: created.id });
  assert.equal(history.total ?? history.entry.length, 3);
  await client.delete({ resourceType: 'Patient', id: created.id });
  await assert.rejects(client.read({ resourceType: 'Patient', id: created.id }), (e) => [404, 410].includes(e.response?.status));
});

test('search, paging with nextPage, compartment search, counts', async () => {
  const patient = await client.create({ resourceType: 'Patient', body: { resourceType: 'Patient', name: [{ family: family('Page') }] } });
  for (let i = 0; i < 12; i++) {
    await client.create({ resourceType: 'Observation', body: { resourceType: 'Observation', status: 'final', code: { text: `kit ${i}` }, subject: { reference: `Patient/${patient.id}` } } });
  }
  let bundle = await client.search({ resourceType: 'Observation', searchParams: { subject: `Patient/${patient.id}`, _count: 5 } });
  const ids = new Set();
  for (;;) {
    for (const e of bundle.entry ?? []) ids.add(e.resource.id);
    const next = client.nextPage({ bundle });
    if (!next) break;
    bundle = await next;
  }
  assert.equal(ids.size, 12);
  const compartment = await client.compartmentSearch({ resourceType: 'Observation', compartment: { resourceType: 'Patient', id: patient.id }, searchParams: { _count: 100 } });
  assert.equal(compartment.entry.length, 12);
  const counted = await client.search({ resourceType: 'Observation', searchParams: { subject: `Patient/${patient.id}`, _summary: 'count' } });
  assert.equal(counted.total, 12);
  const zero = await client.search({ resourceType: 'Observation', searchParams: { subject: `Patient/${patient.id}`, _count: 0 } });
  assert.equal(zero.total, 12);
  assert.ok(!(zero.entry ?? []).some((e) => e.search?.mode === 'match'));
  const chained = await client.search({ resourceType: 'Observation', searchParams: { 'subject:Patient.name': family('Page'), _include: 'Observation:subject', _count: 50 } });
  assert.equal(chained.entry.filter((e) => e.search.mode === 'include').length, 1);
  await assert.rejects(client.search({ resourceType: 'Observation', searchParams: { patinet: patient.id } }), (e) => e.response?.status === 400);
});

test('transaction and batch', async () => {
  const fullUrl = `urn:uuid:${randomUUID()}`;
  const result = await client.transaction({ body: { resourceType: 'Bundle', type: 'transaction', entry: [
    { fullUrl, resource: { resourceType: 'Patient', name: [{ family: family('Tx') }] }, request: { method: 'POST', url: 'Patient' } },
    { resource: { resourceType: 'Observation', status: 'final', code: { text: 'tx' }, subject: { reference: fullUrl } }, request: { method: 'POST', url: 'Observation' } },
  ] } });
  assert.equal(result.type, 'transaction-response');
  assert.ok(result.entry.every((e) => e.response.status.startsWith('201')));
  const batch = await client.batch({ body: { resourceType: 'Bundle', type: 'batch', entry: [
    { request: { method: 'GET', url: `Patient?family=${family('Tx')}` } },
    { request: { method: 'GET', url: 'Patient/does-not-exist' } },
  ] } });
  assert.equal(batch.entry[0].resource.entry.length, 1);
  assert.ok(batch.entry[1].response.status.startsWith('404'));
});

test('operations: $validate and $everything by GET and POST', async () => {
  const outcome = await client.operation({ resourceType: 'Patient', name: '$validate', input: { resourceType: 'Patient', gender: 'nonsense' } }).catch((e) => e.response?.data);
  assert.equal(outcome.resourceType, 'OperationOutcome');
  assert.ok(outcome.issue.some((i) => i.severity === 'error' && JSON.stringify(i).includes('gender')));
  const patient = await client.create({ resourceType: 'Patient', body: { resourceType: 'Patient', name: [{ family: family('Ev') }] } });
  const byGet = await client.operation({ resourceType: 'Patient', id: patient.id, name: '$everything', method: 'get' });
  const byPost = await client.operation({ resourceType: 'Patient', id: patient.id, name: '$everything', input: { resourceType: 'Parameters' } });
  assert.equal(byGet.entry.length, 1);
  assert.equal(byPost.entry.length, 1);
});
