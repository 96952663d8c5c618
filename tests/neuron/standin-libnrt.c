/*
 * A stand-in for the AWS Neuron runtime library (libnrt.so), for tests on
 * machines without Inferentia hardware. It implements the part of the C API
 * (nrt.h, nrt_experimental.h, nrt_version.h) that neorun's Neuron engine
 * calls, with the same signatures and status codes, on the CPU.
 *
 * It runs the "NEFF" that tests/neuron/standin-neuronx-cc writes: a text
 * file whose first line is NEFF-STANDIN, with lines
 *   io input|output NAME float32 D1,D2,...
 *   op relu|sum
 * relu: output 0 = max(input 0, 0) elementwise; sum: every element of every
 * output = the sum of every input element. Anything else: NRT_INVALID.
 *
 * Knobs (environment of the process that loads it): STANDIN_NRT_MAJOR
 * (version reported, default 2), STANDIN_NRT_INIT_FAIL=1 (no device),
 * STANDIN_NRT_EXEC_FAIL=1 (nrt_execute reports a hardware error).
 * Build with -DSTANDIN_OMIT_EXECUTE for a library missing nrt_execute.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

typedef int NRT_STATUS;
enum { NRT_SUCCESS = 0, NRT_FAILURE = 1, NRT_INVALID = 2, NRT_RESOURCE = 4, NRT_HW_ERROR = 6, NRT_UNINITIALIZED = 13 };

typedef struct nrt_version {
    uint64_t rt_major, rt_minor, rt_patch, rt_maintenance;
    char rt_detail[128];
    char git_hash[64];
} nrt_version_t;

typedef struct nrt_tensor_info {
    char name[256];
    int usage;
    size_t size;
    int dtype;
    uint32_t *shape;
    uint32_t ndim;
} nrt_tensor_info_t;

typedef struct nrt_tensor_info_array {
    uint64_t tensor_count;
    nrt_tensor_info_t tensor_array[];
} nrt_tensor_info_array_t;

#define MAX_IO 16
typedef struct { char name[256]; int usage; uint32_t shape[8]; uint32_t ndim; size_t size; } io_t;
typedef struct { io_t io[MAX_IO]; int n; int relu; } nrt_model_t;
typedef struct { size_t size; unsigned char *data; } nrt_tensor_t;
typedef struct { char names[MAX_IO][256]; nrt_tensor_t *tensors[MAX_IO]; int n; } tensor_set_t;

static int initialized;

NRT_STATUS nrt_get_version(nrt_version_t *ver, size_t size) {
    nrt_version_t v;
    memset(&v, 0, sizeof v);
    const char *major = getenv("STANDIN_NRT_MAJOR");
    v.rt_major = major ? strtoull(major, NULL, 10) : 2;
    v.rt_minor = 99;
    snprintf(v.rt_detail, sizeof v.rt_detail, "neoc stand-in libnrt (not the Neuron runtime)");
    memcpy(ver, &v, size < sizeof v ? size : sizeof v);
    return NRT_SUCCESS;
}

NRT_STATUS nrt_init(int framework, const char *fw_version, const char *fal_version) {
    (void)framework; (void)fw_version; (void)fal_version;
    if (getenv("STANDIN_NRT_INIT_FAIL")) return NRT_RESOURCE;
    initialized = 1;
    return NRT_SUCCESS;
}

void nrt_close(void) { initialized = 0; }

NRT_STATUS nrt_load(const void *neff, size_t size, int32_t start, int32_t count, nrt_model_t **model) {
    (void)start; (void)count;
    if (!initialized) return NRT_UNINITIALIZED;
    if (size < 12 || memcmp(neff, "NEFF-STANDIN", 12) != 0) return NRT_INVALID;
    char *text = malloc(size + 1);
    memcpy(text, neff, size);
    text[size] = 0;
    nrt_model_t *m = calloc(1, sizeof *m);
    int have_op = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char kind[16], name[256], dtype[16], dims[128];
        if (sscanf(line, "io %15s %255s %15s %127s", kind, name, dtype, dims) == 4 && m->n < MAX_IO) {
            io_t *io = &m->io[m->n++];
            snprintf(io->name, sizeof io->name, "%s", name);
            io->usage = strcmp(kind, "output") == 0;
            size_t elems = 1;
            char *save, *d = strtok_r(dims, ",", &save);
            for (; d && io->ndim < 8; d = strtok_r(NULL, ",", &save)) {
                io->shape[io->ndim++] = (uint32_t)strtoul(d, NULL, 10);
                elems *= io->shape[io->ndim - 1];
            }
            io->size = elems * 4;
            if (strcmp(dtype, "float32") != 0) { free(text); free(m); return NRT_INVALID; }
        } else if (strncmp(line, "op ", 3) == 0) {
            have_op = 1;
            m->relu = strcmp(line + 3, "relu") == 0;
            if (!m->relu && strcmp(line + 3, "sum") != 0) { free(text); free(m); return NRT_INVALID; }
        }
    }
    free(text);
    if (!have_op || m->n == 0) { free(m); return NRT_INVALID; }
    *model = m;
    return NRT_SUCCESS;
}

NRT_STATUS nrt_unload(nrt_model_t *model) { free(model); return NRT_SUCCESS; }

NRT_STATUS nrt_get_model_tensor_info(nrt_model_t *m, nrt_tensor_info_array_t **out) {
    nrt_tensor_info_array_t *a = calloc(1, sizeof *a + m->n * sizeof(nrt_tensor_info_t));
    a->tensor_count = m->n;
    for (int i = 0; i < m->n; i++) {
        nrt_tensor_info_t *t = &a->tensor_array[i];
        snprintf(t->name, sizeof t->name, "%s", m->io[i].name);
        t->usage = m->io[i].usage;
        t->size = m->io[i].size;
        t->dtype = 1; /* NRT_DTYPE_FLOAT32 */
        t->ndim = m->io[i].ndim;
        t->shape = malloc(sizeof(uint32_t) * 8);
        memcpy(t->shape, m->io[i].shape, sizeof(uint32_t) * 8);
    }
    *out = a;
    return NRT_SUCCESS;
}

NRT_STATUS nrt_free_model_tensor_info(nrt_tensor_info_array_t *a) {
    for (uint64_t i = 0; i < a->tensor_count; i++) free(a->tensor_array[i].shape);
    free(a);
    return NRT_SUCCESS;
}

NRT_STATUS nrt_allocate_tensor_set(void **result) { *result = calloc(1, sizeof(tensor_set_t)); return NRT_SUCCESS; }
void nrt_destroy_tensor_set(void **set) { free(*set); *set = NULL; }

NRT_STATUS nrt_add_tensor_to_tensor_set(void *set, const char *name, nrt_tensor_t *tensor) {
    tensor_set_t *s = set;
    if (s->n >= MAX_IO) return NRT_RESOURCE;
    snprintf(s->names[s->n], 256, "%s", name);
    s->tensors[s->n++] = tensor;
    return NRT_SUCCESS;
}

NRT_STATUS nrt_tensor_allocate(int placement, int vnc, size_t size, const char *name, nrt_tensor_t **tensor) {
    (void)placement; (void)vnc; (void)name;
    nrt_tensor_t *t = malloc(sizeof *t);
    t->size = size;
    t->data = calloc(1, size);
    *tensor = t;
    return NRT_SUCCESS;
}

void nrt_tensor_free(nrt_tensor_t **tensor) {
    if (*tensor) { free((*tensor)->data); free(*tensor); }
    *tensor = NULL;
}

NRT_STATUS nrt_tensor_write(nrt_tensor_t *t, const void *buf, size_t offset, size_t size) {
    if (offset + size > t->size) return NRT_INVALID;
    memcpy(t->data + offset, buf, size);
    return NRT_SUCCESS;
}

NRT_STATUS nrt_tensor_read(const nrt_tensor_t *t, void *buf, size_t offset, size_t size) {
    if (offset + size > t->size) return NRT_INVALID;
    memcpy(buf, t->data + offset, size);
    return NRT_SUCCESS;
}

#ifndef STANDIN_OMIT_EXECUTE
NRT_STATUS nrt_execute(nrt_model_t *m, const void *inputs, void *outputs) {
    const tensor_set_t *in = inputs;
    tensor_set_t *out = outputs;
    if (getenv("STANDIN_NRT_EXEC_FAIL")) return NRT_HW_ERROR;
    if (in->n == 0 || out->n == 0) return NRT_INVALID;
    if (m->relu) {
        const float *x = (const float *)in->tensors[0]->data;
        float *y = (float *)out->tensors[0]->data;
        size_t n = out->tensors[0]->size / 4;
        if (in->tensors[0]->size != out->tensors[0]->size) return NRT_INVALID;
        for (size_t i = 0; i < n; i++) y[i] = x[i] > 0 ? x[i] : 0;
        return NRT_SUCCESS;
    }
    double sum = 0;
    for (int i = 0; i < in->n; i++) {
        const float *x = (const float *)in->tensors[i]->data;
        for (size_t k = 0; k < in->tensors[i]->size / 4; k++) sum += x[k];
    }
    for (int o = 0; o < out->n; o++) {
        float *y = (float *)out->tensors[o]->data;
        for (size_t k = 0; k < out->tensors[o]->size / 4; k++) y[k] = (float)sum;
    }
    return NRT_SUCCESS;
}
#endif
