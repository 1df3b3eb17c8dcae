// The device's memory in IndexedDB. The server deletes what it delivered, so this
// is where history lives, beside the secret key store (e2e.js) and the outbox.
//
// Stores:
//   kv             "account" {user, device}, "keystore" (KeyStore.toJSON())
//   conversations  {id, kind, title, members, admins, last_seq, read_seq, …} by id
//   messages       one row per message, event or notice, by key; index "conversation"
//   outbox         messages waiting for their first ack, by client_id
//   users          {id, username, display_name}: names for ids seen anywhere

const DB_NAME = "natter";
const DB_VERSION = 1;

function promisify(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export class Store {
  constructor(db) {
    this.db = db;
  }

  static async open() {
    const request = indexedDB.open(DB_NAME, DB_VERSION);
    request.onupgradeneeded = () => {
      const db = request.result;
      db.createObjectStore("kv");
      db.createObjectStore("conversations", { keyPath: "id" });
      const messages = db.createObjectStore("messages", { keyPath: "key" });
      messages.createIndex("conversation", "conversation");
      db.createObjectStore("outbox", { keyPath: "client_id" });
      db.createObjectStore("users", { keyPath: "id" });
    };
    // Another tab holding an old version must let go, or the upgrade waits forever.
    request.onblocked = () => console.warn("natter: IndexedDB upgrade blocked by another tab");
    const db = await promisify(request);
    db.onversionchange = () => db.close();
    return new Store(db);
  }

  /** Remove every trace of the device (log out). */
  static async destroy(store) {
    if (store) store.db.close();
    await promisify(indexedDB.deleteDatabase(DB_NAME)).catch(() => {});
  }

  async get(name, key) {
    return promisify(this.db.transaction(name).objectStore(name).get(key));
  }

  async getAll(name) {
    return promisify(this.db.transaction(name).objectStore(name).getAll());
  }

  async byConversation(conversation) {
    const index = this.db.transaction("messages").objectStore("messages").index("conversation");
    return promisify(index.getAll(IDBKeyRange.only(conversation)));
  }

  async put(name, value, key = undefined) {
    return this.write([[name, value, key]]);
  }

  async delete(name, key) {
    return this.write([[name, undefined, key, true]]);
  }

  /**
   * Several writes in one transaction, all or nothing: a decrypted message is
   * stored together with the ratchet state that opened it.
   * Each write: [store, value, key?, isDelete?].
   */
  write(writes) {
    const names = [...new Set(writes.map((w) => w[0]))];
    if (!names.length) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const tx = this.db.transaction(names, "readwrite", { durability: "strict" });
      for (const [name, value, key, isDelete] of writes) {
        const os = tx.objectStore(name);
        if (isDelete) os.delete(key);
        else if (key === undefined) os.put(value);
        else os.put(value, key);
      }
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error || new Error("transaction aborted"));
    });
  }
}
