// Xen Orchestra's Xen-API client (npm xen-api@4.7.6) driven the way xo-server drives it.
//
//   node xo_client.mjs <scenario> '<json config>'
//
// config: {url, transport: 'auto'|'xml-rpc'|'json-rpc', module: '/abs/path/xen-api/index.mjs', ...}
// The library is imported from the absolute path given (it lives in tests/e2e/node/node_modules,
// which ESM resolution would not find from here).  The last stdout line is a JSON report; a
// scenario that throws prints {"error": ...} and exits 2.  Lines before it are progress markers
// ("READY") that the Python side may wait for.  After disconnect() the process must end by itself:
// the library leaves its event.from long poll running, so the server has to end it on logout.
import { pathToFileURL } from 'node:url'

const [scenario, rawConfig] = process.argv.slice(2)
const config = JSON.parse(rawConfig)
const { createClient } = await import(pathToFileURL(config.module).href)

const TIMEOUT_MS = config.timeoutMs ?? 20000

function withTimeout(promise, what, ms = TIMEOUT_MS) {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function fieldsOf(object) {
  return Object.keys(object).filter(key => !key.startsWith('$'))
}

function guests(xapi) {
  return Object.values(xapi.objects.all).filter(o => o.$type === 'VM' && !o.is_control_domain && !o.is_a_template)
}

function guestIn(xapi, powerState) {
  const vm = guests(xapi).find(o => o.power_state === powerState)
  if (vm === undefined) throw new Error(`no guest ${powerState} in XO's cache`)
  return vm
}

function errorOf(error) {
  return { code: error?.code ?? null, params: error?.params ?? null, message: String(error?.message ?? error),
           taskStatus: error?.task?.status ?? null }
}

async function caught(promise) {
  try {
    return { value: await promise }
  } catch (error) {
    return { error: errorOf(error) }
  }
}

// Wait until predicate() holds, re-checking after every batch of events the library processes.
async function until(xapi, predicate, what) {
  const deadline = Date.now() + TIMEOUT_MS
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await withTimeout(new Promise(resolve => xapi.once('eventFetchingSuccess', resolve)), what)
  }
}

async function connected() {
  const xapi = createClient({
    url: config.url,
    auth: { user: config.user ?? 'root', password: config.password ?? 'admin-pw' },
    allowUnauthorized: true,
    transport: config.transport,
  })
  await withTimeout(xapi.connect(), 'connect()')
  await withTimeout(xapi.objectsFetched, 'objectsFetched')
  return xapi
}

// What xo-server's xapi-object-to-xo.mjs reads of a storage object (the same fields, the same
// $-links through the library's cache): a report of how XO would show it.  A link the cache cannot
// resolve comes out null.
function link(object, field) {
  const value = object[`$${field}`]
  if (value == null) return null
  return Array.isArray(value) ? value.map(o => o?.$id ?? null) : value.$id ?? null
}

const XO_VIEWS = {
  SR: o => ({
    content_type: o.content_type, physical_usage: +o.physical_utilisation, name_label: o.name_label,
    size: +o.physical_size, shared: Boolean(o.shared), SR_type: o.type, usage: +o.virtual_allocation,
    VDIs: link(o, 'VDIs'), sm_config: o.sm_config, other_config: o.other_config, tags: o.tags,
    $container: o.shared || !o.$PBDs?.[0] ? link(o, 'pool') : link(o.$PBDs[0], 'host'), $PBDs: link(o, 'PBDs'),
  }),
  VDI: o => ({
    missing: o.missing, name_label: o.name_label, name_description: o.name_description,
    parent: o.sm_config['vhd-parent'] ?? null, size: +o.virtual_size, snapshots: link(o, 'snapshots'),
    usage: +o.physical_utilisation, VDI_type: o.type, managed: o.managed, is_a_snapshot: o.is_a_snapshot,
    $SR: link(o, 'SR'), $VBDs: link(o, 'VBDs'),
  }),
  VBD: o => ({
    attached: Boolean(o.currently_attached), bootable: Boolean(o.bootable), device: o.device || null,
    is_cd_drive: o.type === 'CD', position: o.userdevice, read_only: o.mode === 'RO',
    VDI: link(o, 'VDI'), VM: link(o, 'VM'),
  }),
  PBD: o => ({
    attached: Boolean(o.currently_attached), host: link(o, 'host'), SR: link(o, 'SR'),
    device_config: o.device_config, otherConfig: o.other_config,
  }),
  SM: o => ({ type: o.type, name_label: o.name_label, features: o.features }),
}

// The class each ref (or set of refs) of a record leads to in the cache; "MISSING" where the
// cache has no object for a ref that is not OpaqueRef:NULL.
function linkTypes(object) {
  const out = {}
  const isRef = v => typeof v === 'string' && v.startsWith('OpaqueRef:')
  for (const field of fieldsOf(object)) {
    const value = object[field]
    const typeOf = ref =>
      ref === 'OpaqueRef:NULL' ? null : object.$xapi.getObjectByRef(ref, undefined)?.$type ?? 'MISSING'
    if (isRef(value)) out[field] = typeOf(value)
    else if (Array.isArray(value) && value.length > 0 && value.every(isRef)) out[field] = value.map(typeOf)
  }
  return out
}

function asXo(object) {
  return {
    ref: object.$ref, id: object.$id, uuid: object.uuid, $type: object.$type, fields: fieldsOf(object),
    links: linkTypes(object), pool: link(object, 'pool'), xo: XO_VIEWS[object.$type](object),
  }
}

function storageCache(xapi) {
  const cache = {}
  for (const type of Object.keys(XO_VIEWS)) {
    cache[type] = Object.values(xapi.objects.all).filter(o => o.$type === type).map(asXo)
  }
  return cache
}

const scenarios = {
  // connect, initial sync through event.inject + get_all_records + event.from, list, disconnect
  async connect() {
    const xapi = await connected()
    // a round trip through event.from: barrier() adds a pool other_config key and waits for its event
    await withTimeout(xapi.barrier(), 'barrier()')
    const objects = Object.values(xapi.objects.all)
    const counts = {}
    for (const o of objects) counts[o.$type] = (counts[o.$type] ?? 0) + 1
    const vms = objects.filter(o => o.$type === 'VM').map(v => ({
      ref: v.$ref, uuid: v.uuid, name_label: v.name_label, power_state: v.power_state,
      is_control_domain: v.is_control_domain, fields: fieldsOf(v),
      residentOnType: v.$resident_on?.$type ?? null, metricsType: v.$metrics?.$type ?? null,
      byUuid: xapi.getObjectByUuid(v.uuid, undefined)?.$ref ?? null,
    }))
    const report = {
      status: xapi.status,
      pool: { ref: xapi.pool.$ref, master: xapi.pool.master, masterType: xapi.pool.$master?.$type ?? null },
      counts, vms, watchEventsError: xapi.watchEventsError ? String(xapi.watchEventsError) : null,
    }
    await xapi.disconnect()
    report.statusAfterDisconnect = xapi.status
    return report
  },

  // xapi.call (sync) and xapi.callAsync (task + task event + task.destroy) on a halted guest
  async power() {
    const xapi = await connected()
    const vm = guestIn(xapi, 'Halted')
    const ref = vm.$ref
    const startResult = await xapi.call('VM.start', ref, false, false)
    const afterStart = (await withTimeout(xapi.barrier(ref), 'barrier after start')).power_state
    const shutdownResult = await withTimeout(xapi.callAsync('VM.clean_shutdown', ref), 'callAsync(VM.clean_shutdown)')
    const afterShutdown = (await withTimeout(xapi.barrier(ref), 'barrier after shutdown')).power_state
    // callAsync destroys its task once settled; the task's del event then empties the cache
    const tasks = () => Object.values(xapi.objects.all).filter(o => o.$type === 'task')
    await until(xapi, () => tasks().length === 0, 'the finished task to be destroyed')
    const report = { ref, startResult, afterStart, shutdownResult, afterShutdown, tasksLeft: tasks().length }
    await xapi.disconnect()
    return report
  },

  // errors: sync call, failed task (error_info), unknown handle, unknown method
  async errors() {
    const xapi = await connected()
    const running = guestIn(xapi, 'Running')
    const report = {
      ref: running.$ref,
      sync: await caught(xapi.call('VM.start', running.$ref, false, false)),
      async: await caught(withTimeout(xapi.callAsync('VM.start', running.$ref, false, false), 'failing callAsync')),
      badHandle: await caught(xapi.call('VM.get_record', 'OpaqueRef:00000000-0000-0000-0000-00000000dead')),
      unknownMethod: await caught(xapi.call('VM.no_such_message', running.$ref)),
    }
    await xapi.disconnect()
    return report
  },

  // setField / setFieldEntry (remove_from_ then add_to_), read back through the event cache
  async fields() {
    const xapi = await connected()
    const vm = guestIn(xapi, 'Halted')
    const ref = vm.$ref
    await xapi.setField('VM', ref, 'name_description', 'described by XO')
    await xapi.setFieldEntry('VM', ref, 'other_config', 'xo:test', 'one')
    await xapi.setFieldEntry('VM', ref, 'other_config', 'xo:test', 'two')
    const set = await withTimeout(xapi.barrier(ref), 'barrier after set')
    const afterSet = { name_description: set.name_description, other_config: { ...set.other_config } }
    await xapi.setFieldEntry('VM', ref, 'other_config', 'xo:test', null)
    const removed = await withTimeout(xapi.barrier(ref), 'barrier after remove')
    const byUuid = await xapi.getRecordByUuid('VM', vm.uuid)
    const report = {
      ref, afterSet, afterRemove: { ...removed.other_config },
      byUuid: { ref: byUuid.$ref, name_label: byUuid.name_label, name_description: byUuid.name_description },
    }
    await xapi.disconnect()
    return report
  },

  // SR, VDI, VBD, PBD and SM in the cache as xo-server reads them; then a VDI that someone else
  // creates, renames and destroys, followed through event.from.  Handshakes on stdout: READY (the
  // cache is filled), SEEN <ref> (the VDI named config.name is in the cache and in its SR's VDIs),
  // RENAMED <ref> (its name is config.renamed); the report follows once it has left the cache.
  async storage() {
    const xapi = await connected()
    const initial = storageCache(xapi)
    const history = []              // [add|update|remove, name_label] of the watched VDI, as the cache emitted them
    const watched = new Set()       // its id (a removal carries the id only)
    const track = what => objects => {
      for (const [id, o] of Object.entries(objects)) {
        if (o?.$type === 'VDI' && [config.name, config.renamed].includes(o.name_label)) watched.add(id)
        if (watched.has(id)) history.push([what, o?.name_label ?? null])
      }
    }
    xapi.objects.on('add', track('add'))
    xapi.objects.on('update', track('update'))
    xapi.objects.on('remove', track('remove'))
    const named = name => Object.values(xapi.objects.all).find(o => o.$type === 'VDI' && o.name_label === name)
    console.log(`READY ${xapi.pool.default_SR}`)

    await until(xapi, () => named(config.name)?.$SR?.VDIs.includes(named(config.name).$ref),
      `VDI ${config.name} in the cache and in its SR's VDIs`)
    const vdi = named(config.name)
    const { $ref: ref, uuid } = vdi
    const sr = vdi.$SR.$ref
    const seen = asXo(vdi)
    console.log(`SEEN ${ref}`)

    await until(xapi, () => xapi.getObjectByRef(ref, undefined)?.name_label === config.renamed, `${ref} renamed`)
    const renamed = asXo(xapi.getObjectByRef(ref))
    console.log(`RENAMED ${ref}`)

    await until(xapi, () => xapi.getObjectByRef(ref, undefined) === undefined &&
      !xapi.getObjectByRef(sr).VDIs.includes(ref), `${ref} to leave the cache and its SR's VDIs`)
    const report = {
      initial, seen, renamed, history,
      gone: { byRef: xapi.getObjectByRef(ref, undefined) ?? null, byUuid: xapi.getObjectByUuid(uuid, undefined) ?? null,
              srVDIs: xapi.getObjectByRef(sr).VDIs },
    }
    await xapi.disconnect()
    return report
  },

  // stay connected until a change made by someone else reaches the cache through event.from
  async watch() {
    const xapi = await connected()
    const vm = guestIn(xapi, 'Running')
    const ref = vm.$ref
    console.log(`READY ${ref}`)
    const seen = []
    xapi.objects.on('update', updated => {
      for (const o of Object.values(updated)) if (o.$ref === ref) seen.push(o.power_state)
    })
    await until(xapi, () => xapi.getObjectByRef(ref).power_state === config.expect, `${ref} to be ${config.expect}`)
    const report = { ref, powerState: xapi.getObjectByRef(ref).power_state, seen }
    await xapi.disconnect()
    return report
  },
}

try {
  const run = scenarios[scenario]
  if (run === undefined) throw new Error(`unknown scenario ${scenario}`)
  const report = await run()
  console.log(JSON.stringify(report))
} catch (error) {
  console.log(JSON.stringify({ error: errorOf(error), stack: error?.stack ?? null }))
  process.exit(2)
}
