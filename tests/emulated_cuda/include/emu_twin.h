// A kernel's CPU-compiled twin, registered under its name: `EMU_TWIN(gemm, "A,B,C,...")` after
// `#include "gemm.cu"` (the test harness writes one such file per kernel file, listing every
// `extern "C" __global__` function it finds there). The twin knows its C++ parameter types, so the driver can
// check them against the PTX entry of the same name and copy each launch argument by the kernel's own type.
#pragma once

#include <cstddef>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace emu {

struct ParamType {
    std::string ptx;   // as a PTX .entry declares it, name left out: ".u64", ".f32", ".align 4 .b8[12]"
    std::string cxx;   // for messages: "float*", "const float*", "unsigned long long", "struct of 12 bytes"
    size_t size = 0;
    size_t align = 1;
    bool pointer = false;
    bool writable = false;  // a pointer to non-const: the kernel may write through it
};

template <typename T>
ParamType param_type() {
    ParamType p;
    p.size = sizeof(T);
    p.align = alignof(T);
    if constexpr (std::is_pointer_v<T>) {
        using Pointee = std::remove_pointer_t<T>;
        p.ptx = ".u64";
        p.pointer = true;
        p.writable = !std::is_const_v<Pointee>;
        const char* base = std::is_same_v<std::remove_cv_t<Pointee>, float>                ? "float"
                           : std::is_same_v<std::remove_cv_t<Pointee>, double>             ? "double"
                           : std::is_same_v<std::remove_cv_t<Pointee>, unsigned int>       ? "unsigned int"
                           : std::is_same_v<std::remove_cv_t<Pointee>, unsigned short>     ? "unsigned short"
                                                                                          : "void";
        p.cxx = std::string(p.writable ? "" : "const ") + base + "*";
    } else if constexpr (std::is_same_v<T, float>) {
        p.ptx = ".f32";
        p.cxx = "float";
    } else if constexpr (std::is_same_v<T, double>) {
        p.ptx = ".f64";
        p.cxx = "double";
    } else if constexpr (std::is_integral_v<T>) {
        // nvcc declares signed and unsigned integers alike: `int` and `unsigned` are .u32.
        p.ptx = sizeof(T) == 8 ? ".u64" : sizeof(T) == 4 ? ".u32" : sizeof(T) == 2 ? ".u16" : ".u8";
        p.cxx = sizeof(T) == 8 ? (std::is_signed_v<T> ? "long long" : "unsigned long long")
                : sizeof(T) == 4 ? (std::is_signed_v<T> ? "int" : "unsigned int")
                                 : "small integer";
    } else {
        static_assert(std::is_trivially_copyable_v<T>, "a kernel parameter passed by value must be trivially copyable");
        p.ptx = ".align " + std::to_string(alignof(T)) + " .b8[" + std::to_string(sizeof(T)) + "]";
        p.cxx = "struct of " + std::to_string(sizeof(T)) + " bytes";
    }
    return p;
}

// Runs the current grid (gridDim, blockDim already set): `thread` once per GPU thread, with blockIdx and
// threadIdx set; as fibers when `fibers` (the kernel's PTX has a barrier). Defined in threads.cpp.
void run_grid(void (*thread)(void*), void* context, bool fibers);

struct Twin {
    std::string name;
    std::vector<ParamType> params;
    std::vector<std::string> param_names;
    // Runs the current grid with the arguments at `args` (each at `offsets[i]`, `params[i].size` bytes).
    void (*run)(void* fn, const unsigned char* args, const std::vector<size_t>& offsets, bool fibers) = nullptr;
    void* fn = nullptr;
};

bool register_twin(Twin twin);  // in modules.cpp; returns true so that it can initialize a static

template <typename... P>
struct TwinRunner {
    using Fn = void (*)(P...);
    struct Call {
        Fn fn;
        std::tuple<P...>* args;
    };
    static void thread(void* context) {
        Call* call = static_cast<Call*>(context);
        std::apply(call->fn, *call->args);
    }
    template <size_t... I>
    static void unpack(std::tuple<P...>& args, const unsigned char* blob, const std::vector<size_t>& offsets,
                       std::index_sequence<I...>) {
        (std::memcpy(static_cast<void*>(&std::get<I>(args)), blob + offsets[I], sizeof(P)), ...);
    }
    static void run(void* fn, const unsigned char* blob, const std::vector<size_t>& offsets, bool fibers) {
        std::tuple<P...> args{};
        unpack(args, blob, offsets, std::index_sequence_for<P...>{});
        Call call{reinterpret_cast<Fn>(fn), &args};
        run_grid(&thread, &call, fibers);
    }
};

template <typename... P>
Twin make_twin(const char* name, const char* names, void (*fn)(P...)) {
    Twin t;
    t.name = name;
    t.params = {param_type<P>()...};
    std::string all(names);
    size_t start = 0;
    while (start <= all.size()) {
        size_t comma = all.find(',', start);
        if (comma == std::string::npos) comma = all.size();
        if (comma > start) t.param_names.push_back(all.substr(start, comma - start));
        start = comma + 1;
    }
    t.run = &TwinRunner<P...>::run;
    t.fn = reinterpret_cast<void*>(fn);
    return t;
}

}  // namespace emu

#define EMU_TWIN(kernel, names) \
    static const bool emu_twin_registered_##kernel = emu::register_twin(emu::make_twin(#kernel, names, &kernel));
