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
